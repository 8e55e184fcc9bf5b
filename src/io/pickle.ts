/**
 * A restricted Python unpickler, written for one job: reading the pickle inside a PyTorch
 * checkpoint (data.pkl) without ever running anything the file asks for.
 *
 * A pickle is a small stack program. Most opcodes only build data (ints, strings, tuples,
 * lists, dicts); the dangerous ones name a Python global (GLOBAL, STACK_GLOBAL) and then call
 * it (REDUCE, NEWOBJ, INST, OBJ, BUILD's __setstate__) — `os.system` + REDUCE is the classic
 * payload. Here:
 *   - GLOBAL/STACK_GLOBAL look the name up in the caller's allow-list (`policy.globals`, whose
 *     values are sdlab's own objects); any other name is refused with one line naming it and
 *     the file, as soon as the opcode is read — before anything could be called.
 *   - REDUCE calls only a PyCallable from that list (sdlab's own TypeScript function, which
 *     checks its arguments); REDUCE on anything else is refused.
 *   - BUILD only records the state of a dict (an OrderedDict's `_metadata`); anything else is
 *     refused. INST, OBJ, NEWOBJ(_EX), EXT1/2/4, PERSID, out-of-band buffers and the text
 *     (protocol 0) opcodes are refused as well: no state dict needs them.
 * Bounded: the caller caps the pickle's size (MAX_PICKLE_BYTES), every length is checked against
 * the bytes that remain before anything is allocated, the memo is a Map (a hostile index
 * allocates nothing) and open MARKs are capped (MAX_PICKLE_NESTING). Nothing here walks a value
 * recursively, so deeply nested or cyclic values cannot overflow the stack.
 *
 *   const value = unpickle(bytes, 'model.ckpt', { globals: new Map([['collections.OrderedDict', orderedDict]]) });
 */
import { UsageError } from '../util/errors.ts';
import { oneLine } from '../util/json.ts';
import { MAX_PICKLE_NESTING } from '../util/limits.ts';

/** A Python tuple (lists are JS arrays). */
export class PyTuple {
  constructor(readonly items: readonly unknown[]) {}
}

/** A Python dict or OrderedDict; `state` holds what BUILD gave it (an OrderedDict's attributes). */
export class PyDict {
  readonly items = new Map<unknown, unknown>();
  state: unknown = undefined;
  constructor(readonly className = 'dict') {}
}

/** A Python set or frozenset. */
export class PySet {
  readonly items = new Set<unknown>();
  constructor(readonly className = 'set') {}
}

/** One of sdlab's own functions, standing in for an allowed Python callable (REDUCE calls it). */
export class PyCallable {
  constructor(
    /** "module.name" of the Python callable it replaces. */
    readonly pythonName: string,
    readonly call: (args: readonly unknown[]) => unknown,
  ) {}
}

export interface UnpicklePolicy {
  /** "module.name" → the value GLOBAL pushes for it. Every other global is refused. */
  globals: ReadonlyMap<string, unknown>;
  /** Turns a BINPERSID id into a value (torch: a storage reference); absent: BINPERSID is refused. */
  persistentLoad?: (pid: unknown) => unknown;
}

/** A value's Python type, for messages (never recursive). */
export function pyTypeName(v: unknown): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  if (typeof v === 'bigint') return 'int';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof PyDict || v instanceof PySet) return v.className;
  if (v instanceof PyCallable) return v.pythonName;
  const named = (v as { pyTypeName?: unknown } | undefined)?.pyTypeName;
  return typeof named === 'string' ? named : 'object';
}

const OPCODE_NAMES: Record<number, string> = {
  0x69: 'INST', 0x6f: 'OBJ', 0x81: 'NEWOBJ', 0x92: 'NEWOBJ_EX', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4',
  0x50: 'PERSID', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
  0x49: 'INT', 0x4c: 'LONG', 0x46: 'FLOAT', 0x53: 'STRING', 0x56: 'UNICODE', 0x70: 'PUT', 0x67: 'GET',
};

/** Opcodes that create objects of arbitrary classes or run lookups: refused outright. */
const CALLING = new Set([0x69, 0x6f, 0x81, 0x92, 0x82, 0x83, 0x84]);

/** Largest LONG4 integer accepted, in bytes (an int of a state dict fits in 8). */
const MAX_LONG_BYTES = 64;

/**
 * Runs the pickle in `bytes` under `policy` and returns its value. `source` names the file in
 * errors; every error is one UsageError line.
 */
export function unpickle(bytes: Uint8Array, source: string, policy: UnpicklePolicy): unknown {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  let opPos = 0;
  const fail = (why: string): never => {
    throw new UsageError(`${source}: ${why} (pickle byte ${opPos}).`);
  };
  const refuse = (why: string): never => {
    throw new UsageError(`${source}: refused to load: ${why}; sdlab reads only PyTorch tensor state dicts and runs nothing from the file.`);
  };
  const need = (n: number, what: string): void => {
    if (n < 0 || pos + n > bytes.length) fail(`the pickle ends inside ${what} (${n} bytes asked for, ${bytes.length - pos} left; truncated?)`);
  };
  const u8 = () => (need(1, 'an opcode argument'), bytes[pos++]);
  const u16 = () => (need(2, 'an opcode argument'), (pos += 2), view.getUint16(pos - 2, true));
  const u32 = () => (need(4, 'an opcode argument'), (pos += 4), view.getUint32(pos - 4, true));
  const u64 = (): number => {
    need(8, 'an opcode argument');
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(bytes.length)) fail(`a length of ${v} bytes is longer than the whole pickle`);
    return Number(v);
  };
  const take = (n: number, what: string): Uint8Array => {
    need(n, what);
    pos += n;
    return bytes.subarray(pos - n, pos);
  };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const text = (n: number): string => {
    const b = take(n, 'a string');
    try {
      return utf8.decode(b);
    } catch {
      return fail('a string is not valid UTF-8');
    }
  };
  const latin1 = (n: number): string => Buffer.from(take(n, 'a string')).toString('latin1');
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail('the pickle ends inside a GLOBAL name (truncated?)');
    const s = Buffer.from(bytes.subarray(pos, end)).toString('utf8');
    pos = end + 1;
    return s;
  };

  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const pop = (): unknown => {
    if (stack.length === 0) fail('the pickle pops from an empty stack');
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) fail('the pickle reads an empty stack');
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = metastack.pop();
    if (prev === undefined) return fail('the pickle closes a MARK it never opened');
    stack = prev;
    return items;
  };
  const lookupGlobal = (module: string, name: string): unknown => {
    const key = `${module}.${name}`;
    if (!policy.globals.has(key)) refuse(`the pickle uses the Python global "${oneLine(key, 120)}", which is not allowed`);
    return policy.globals.get(key);
  };
  const setItems = (target: unknown, items: unknown[]): void => {
    if (!(target instanceof PyDict)) return refuse(`the pickle sets items on a ${pyTypeName(target)}, not a dict`);
    if (items.length % 2 !== 0) fail('SETITEMS with an odd number of values');
    for (let i = 0; i < items.length; i += 2) target.items.set(items[i], items[i + 1]);
  };
  const appendItems = (target: unknown, items: unknown[]): void => {
    if (!Array.isArray(target)) return refuse(`the pickle appends to a ${pyTypeName(target)}, not a list`);
    for (const it of items) target.push(it);
  };
  const int = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  const long = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return int(v);
  };

  while (pos < bytes.length) {
    opPos = pos;
    const op = bytes[pos++];
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('pickle protocol above 5');
        break;
      case 0x95: // FRAME: a length prefix only (framing is advisory)
        u64();
        break;
      case 0x2e: // STOP
        if (metastack.length) fail('the pickle stops with a MARK still open');
        return pop();
      case 0x28: // MARK
        if (metastack.length >= MAX_PICKLE_NESTING) fail(`pickle nested deeper than sdlab's limit of ${MAX_PICKLE_NESTING} open MARKs`);
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark(); // POP of an empty stack after MARK discards the mark, as Python does
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4, 'BININT');
        stack.push(view.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(long(take(u8(), 'LONG1')));
        break;
      case 0x8b: {
        // LONG4
        const n = u32();
        if (n > MAX_LONG_BYTES) fail(`an integer of ${n} bytes (LONG4) is larger than any state dict holds`);
        stack.push(long(take(n, 'LONG4')));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8, 'BINFLOAT');
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str)
        stack.push(latin1(u32()));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(u8()));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32(), 'BINBYTES').slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8(), 'SHORT_BINBYTES').slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64(), 'BINBYTES8').slice());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x85: // TUPLE1
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(new PyTuple([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(new PyTuple([pop(), b, c]));
        break;
      }
      case 0x74: {
        // TUPLE (popMark replaces `stack`: take the items before pushing)
        const t = new PyTuple(popMark());
        stack.push(t);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: {
        // LIST
        const l = popMark();
        stack.push(l);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x64: {
        // DICT
        const d = new PyDict();
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new PySet());
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof PySet)) return refuse(`the pickle adds items to a ${pyTypeName(s)}, not a set`);
        for (const it of items) s.items.add(it);
        break;
      }
      case 0x91: {
        // FROZENSET
        const s = new PySet('frozenset');
        for (const it of popMark()) s.items.add(it);
        stack.push(s);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const i = op === 0x68 ? u8() : u32();
        if (!memo.has(i)) fail(`the pickle reads memo entry ${i}, which was never stored`);
        stack.push(memo.get(i));
        break;
      }
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        const name = line();
        stack.push(lookupGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') return refuse('STACK_GLOBAL with a name that is not a string');
        stack.push(lookupGlobal(module, name));
        break;
      }
      case 0x52: {
        // REDUCE: callable(*args)
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PyCallable)) return refuse(`the pickle calls a ${pyTypeName(fn)} (REDUCE), which is not an allowed function`);
        if (!(args instanceof PyTuple)) return fail(`REDUCE on ${fn.pythonName} with a ${pyTypeName(args)} of arguments instead of a tuple`);
        stack.push(fn.call(args.items));
        break;
      }
      case 0x62: {
        // BUILD: obj.__setstate__(state) / obj.__dict__.update(state)
        const state = pop();
        const obj = top();
        if (!(obj instanceof PyDict)) return refuse(`the pickle sets the state of a ${pyTypeName(obj)} (BUILD), which sdlab does not allow`);
        obj.state = state; // an OrderedDict's attributes (state_dict._metadata): kept, never run
        break;
      }
      case 0x51: {
        // BINPERSID
        const pid = pop();
        if (!policy.persistentLoad) return refuse('the pickle refers to an outside object (BINPERSID)');
        stack.push(policy.persistentLoad(pid));
        break;
      }
      default: {
        const name = OPCODE_NAMES[op];
        const hex = `0x${op.toString(16).padStart(2, '0')}`;
        if (CALLING.has(op)) refuse(`the pickle uses opcode ${name} (${hex}) at byte ${opPos}, which creates objects of arbitrary classes`);
        fail(name ? `unsupported pickle opcode ${name} (${hex})` : `unknown pickle opcode ${hex}: not a pickle, or a damaged one`);
      }
    }
  }
  return fail('the pickle ends without STOP (truncated?)');
}
