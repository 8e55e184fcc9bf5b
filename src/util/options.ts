/**
 * Parsers for CLI option values (commander's argParser). Each one throws a one-line
 * error naming the flag and what was expected; the CLI turns it into exit code 2.
 */
import { InvalidArgumentError } from 'commander';

export function int(min = -Infinity, max = Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^[-+]?\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
      throw new InvalidArgumentError(`expected an integer, got "${value}".`);
    }
    if (n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max}], got ${n}.`);
    }
    return n;
  };
}

export function float(min = -Infinity, max = Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) {
      throw new InvalidArgumentError(`expected a number, got "${value}".`);
    }
    if (n < min || n > max) throw new InvalidArgumentError(`expected a number in [${min}, ${max}], got ${n}.`);
    return n;
  };
}

export function oneOf<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value)) {
      throw new InvalidArgumentError(`expected one of ${choices.join(', ')}, got "${value}".`);
    }
    return value as T;
  };
}

/** Comma-separated integers, e.g. "0,250,500,999". */
export function intList(min = -Infinity, max = Infinity) {
  const one = int(min, max);
  return (value: string): number[] => value.split(',').filter((s) => s.trim() !== '').map((s) => one(s.trim()));
}
