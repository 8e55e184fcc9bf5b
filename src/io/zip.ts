/**
 * Reading the zip archives torch.save writes (the container of `.ckpt`/`.pt`/`.bin` files):
 * only what such an archive uses — entries stored uncompressed (torch never compresses, and
 * pads each local header so tensor data is 64-byte aligned), zip64 end records (torch ≥ 1.6
 * always writes them, and a 4 GB SD checkpoint needs them) and data descriptors. Compressed or
 * encrypted entries and multi-disk archives are refused with one line.
 *
 * Everything is checked before it is trusted: the end records and the central directory must
 * lie inside the file (and within MAX_ZIP_ENTRIES / MAX_ZIP_DIRECTORY_BYTES, checked before
 * anything is allocated), each entry's local header must agree with the directory, and its data
 * must end before the central directory starts. Entry data is read on demand, by byte range.
 *
 *   const zip = StoredZip.open('model.ckpt');
 *   zip.entries.get('archive/data.pkl')   // {name, dataOffset, size, crc32}
 *   zip.read('archive/data.pkl')           // Uint8Array (whole entries are CRC-checked)
 */
import fs from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { oneLine } from '../util/json.ts';
import { MAX_ZIP_DIRECTORY_BYTES, MAX_ZIP_ENTRIES } from '../util/limits.ts';
import { crc32 } from '../util/crc32.ts';

export interface ZipEntry {
  name: string;
  /** Absolute offset of the entry's first data byte in the file. */
  dataOffset: number;
  size: number;
  crc32: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;
const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;

/** CRC-32: one home, src/util/crc32.ts (PNG chunks use it too). */
export { crc32 };

/** A zip archive of stored entries, opened and validated; entry data is read on demand. */
export class StoredZip {
  private constructor(
    readonly file: string,
    readonly entries: Map<string, ZipEntry>,
  ) {}

  /** Opens `file` and validates its end records, central directory and local headers. `what` names the format in errors. */
  static open(file: string, what = 'zip archive'): StoredZip {
    checkRegularFile(file, `a ${what}`);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new UsageError(`${file}: cannot open ${what} (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
    }
    try {
      return new StoredZip(file, readDirectory(file, fd, fs.fstatSync(fd).size, what));
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Reads `length` bytes of entry `name` from byte `begin` (default: the whole entry, whose CRC
   * is then checked against the directory's).
   */
  read(name: string, begin = 0, length?: number): Uint8Array {
    const e = this.entries.get(name);
    if (!e) throw new UsageError(`${this.file}: no entry "${oneLine(name)}" in the archive.`);
    const n = length ?? e.size - begin;
    if (begin < 0 || n < 0 || begin + n > e.size) throw new UsageError(`${this.file}: bytes ${begin}..${begin + n} lie outside entry "${oneLine(name)}" (${e.size} bytes).`);
    const bytes = new Uint8Array(n);
    const fd = fs.openSync(this.file, 'r');
    try {
      let done = 0;
      while (done < n) {
        const got = fs.readSync(fd, bytes, done, n - done, e.dataOffset + begin + done);
        if (got === 0) throw new UsageError(`${this.file}: file ended while reading entry "${oneLine(name)}" (truncated?).`);
        done += got;
      }
    } finally {
      fs.closeSync(fd);
    }
    if (begin === 0 && n === e.size && crc32(bytes) !== e.crc32) {
      throw new UsageError(`${this.file}: entry "${oneLine(name)}" fails its CRC-32 check (the file is corrupt).`);
    }
    return bytes;
  }
}

function readAt(fd: number, pos: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const got = fs.readSync(fd, buf, done, length - done, pos + done);
    if (got === 0) break;
    done += got;
  }
  return done === length ? buf : buf.subarray(0, done);
}

/** A u64 from the file as a number; anything past 2^53 cannot be a real offset or size. */
function u64(buf: Buffer, at: number, bad: (why: string) => UsageError, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} ${v} is absurd`);
  return Number(v);
}

function readDirectory(file: string, fd: number, size: number, what: string): Map<string, ZipEntry> {
  const bad = (why: string) => new UsageError(`${file}: not a valid ${what}: ${why}.`);
  if (size < 22) throw bad(`only ${size} bytes, shorter than a zip end record (truncated?)`);
  // The end record is the last 22 bytes plus an archive comment of up to 65535 bytes.
  const tailStart = Math.max(0, size - 22 - U16_MAX);
  const tail = readAt(fd, tailStart, size - tailStart);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === SIG_EOCD && i + 22 + tail.readUInt16LE(i + 20) <= tail.length) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    const head = readAt(fd, 0, 4);
    const why = head.length === 4 && head.readUInt32LE(0) === SIG_LOCAL ? 'no end-of-archive record (truncated?)' : 'no zip end-of-archive record';
    throw bad(why);
  }
  const eocdPos = tailStart + eocd;
  let diskNo = tail.readUInt16LE(eocd + 4);
  let cdDisk = tail.readUInt16LE(eocd + 6);
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  let cdEnd = eocdPos; // the central directory ends where the end records begin
  // zip64: a locator just before the end record points at the zip64 end record.
  if (eocdPos >= 20 && readAt(fd, eocdPos - 20, 4).readUInt32LE(0) === SIG_ZIP64_LOCATOR) {
    const loc = readAt(fd, eocdPos - 20, 20);
    const at = u64(loc, 8, bad, 'zip64 end record offset');
    if (loc.readUInt32LE(16) > 1) throw bad('multi-disk archives are not supported');
    if (at + 56 > eocdPos - 20) throw bad(`zip64 end record offset ${at} lies outside the file`);
    const z = readAt(fd, at, 56);
    if (z.readUInt32LE(0) !== SIG_ZIP64_EOCD) throw bad(`no zip64 end record at offset ${at}`);
    diskNo = z.readUInt32LE(16);
    cdDisk = z.readUInt32LE(20);
    count = u64(z, 32, bad, 'entry count');
    cdSize = u64(z, 40, bad, 'central directory size');
    cdOffset = u64(z, 48, bad, 'central directory offset');
    cdEnd = at;
  } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
    throw bad('the end record asks for zip64 records that are not there');
  }
  if (diskNo !== 0 || cdDisk !== 0) throw bad('multi-disk archives are not supported');
  if (count > MAX_ZIP_ENTRIES) throw bad(`${count} entries, over sdlab's limit of ${MAX_ZIP_ENTRIES}`);
  if (cdSize > MAX_ZIP_DIRECTORY_BYTES) throw bad(`a ${cdSize}-byte central directory, over sdlab's limit of ${MAX_ZIP_DIRECTORY_BYTES}`);
  if (cdOffset + cdSize > cdEnd) throw bad(`the central directory (${cdSize} bytes at offset ${cdOffset}) runs past its end records at ${cdEnd} (truncated?)`);

  const cd = readAt(fd, cdOffset, cdSize);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  for (let k = 0; k < count; k++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== SIG_CENTRAL) throw bad(`central directory entry ${k} is missing or damaged`);
    const flags = cd.readUInt16LE(p + 8);
    const method = cd.readUInt16LE(p + 10);
    const crc = cd.readUInt32LE(p + 16);
    let compSize = cd.readUInt32LE(p + 20);
    let rawSize = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let disk = cd.readUInt16LE(p + 34);
    let localOffset = cd.readUInt32LE(p + 42);
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > cd.length) throw bad(`central directory entry ${k} runs past the directory`);
    let name: string;
    try {
      name = utf8.decode(cd.subarray(p + 46, p + 46 + nameLen));
    } catch {
      throw bad(`entry ${k}'s name is not UTF-8`);
    }
    if (/[\u0000-\u001f\u007f]/.test(name)) throw bad(`entry name ${JSON.stringify(oneLine(name))} contains a control character`);
    // zip64 extended information: the 64-bit values of the fields saturated above, in order.
    const extra = cd.subarray(p + 46 + nameLen, p + 46 + nameLen + extraLen);
    for (let q = 0; q + 4 <= extra.length; ) {
      const id = extra.readUInt16LE(q);
      const len = extra.readUInt16LE(q + 2);
      if (q + 4 + len > extra.length) throw bad(`entry "${oneLine(name)}" has a damaged extra field`);
      if (id === 0x0001) {
        let r = q + 4;
        const take = (): number => {
          if (r + 8 > q + 4 + len) throw bad(`entry "${oneLine(name)}" has a short zip64 extra field`);
          const v = u64(extra, r, bad, `entry "${oneLine(name)}" zip64 value`);
          r += 8;
          return v;
        };
        if (rawSize === U32_MAX) rawSize = take();
        if (compSize === U32_MAX) compSize = take();
        if (localOffset === U32_MAX) localOffset = take();
        if (disk === U16_MAX) disk = r + 4 <= q + 4 + len ? extra.readUInt32LE(r) : disk;
      }
      q += 4 + len;
    }
    if (flags & 1) throw bad(`entry "${oneLine(name)}" is encrypted`);
    if (method !== 0) {
      throw bad(`entry "${oneLine(name)}" is compressed (method ${method}${method === 8 ? ', deflate' : ''}); sdlab reads only stored entries, as torch.save writes them`);
    }
    if (compSize !== rawSize) throw bad(`stored entry "${oneLine(name)}" has compressed size ${compSize} but size ${rawSize}`);
    if (disk !== 0) throw bad('multi-disk archives are not supported');
    if (entries.has(name)) throw bad(`entry "${oneLine(name)}" appears twice`);
    // The local header repeats the name; its extra field (torch's alignment padding) may differ.
    if (localOffset + 30 > cdOffset) throw bad(`entry "${oneLine(name)}" has its local header at ${localOffset}, past the entries' area (truncated?)`);
    const local = readAt(fd, localOffset, 30);
    if (local.length < 30 || local.readUInt32LE(0) !== SIG_LOCAL) throw bad(`entry "${oneLine(name)}" has no local header at offset ${localOffset}`);
    const localNameLen = local.readUInt16LE(26);
    const dataOffset = localOffset + 30 + localNameLen + local.readUInt16LE(28);
    if (localNameLen !== nameLen || !readAt(fd, localOffset + 30, nameLen).equals(cd.subarray(p + 46, p + 46 + nameLen))) {
      throw bad(`entry "${oneLine(name)}": its local header names another file`);
    }
    if (dataOffset + rawSize > cdOffset) {
      throw bad(`entry "${oneLine(name)}" (${rawSize} bytes at offset ${dataOffset}) runs past the entries' area, which ends at ${cdOffset} (truncated?)`);
    }
    entries.set(name, { name, dataOffset, size: rawSize, crc32: crc });
    p = next;
  }
  return entries;
}
