/**
 * CRC-32 (ISO 3309 / ITU-T V.42, polynomial 0xEDB88320): the checksum of zip entries and of
 * PNG chunks. Node's native one where it has it (≥ 20.15), else a table.
 *
 *   crc32(Buffer.from('IEND'))  →  0xae426082
 */
import zlib from 'node:zlib';

let crcTable: Int32Array | null = null;

/** CRC-32 of `bytes`, optionally continuing from a previous value (`crc32(b, crc32(a))` = crc32(a ‖ b)). */
export function crc32(bytes: Uint8Array, previous = 0): number {
  const native = (zlib as unknown as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;
  if (native) return native(bytes, previous) >>> 0;
  if (!crcTable) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  let c = previous ^ -1;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
