/** A PNG decoder small enough for the tests: the signature, every chunk's CRC, the
 * header, and the image data inflated to exactly the rows the header promises. */

import { crc32, inflateSync } from "node:zlib";

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
// colour type -> samples per pixel
const SAMPLES: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

export interface Png {
  width: number;
  height: number;
}

/** The PNG's size; throws if the bytes are not a whole, valid PNG. */
export function decodePng(bytes: Uint8Array): Png {
  const buf = Buffer.from(bytes);
  if (!buf.subarray(0, 8).equals(SIGNATURE)) {
    throw new Error("not a PNG: bad signature");
  }
  let header: { width: number; height: number; depth: number; colour: number } | undefined;
  const data: Buffer[] = [];
  for (let at = 8; at < buf.length; ) {
    const length = buf.readUInt32BE(at);
    const type = buf.toString("latin1", at + 4, at + 8);
    const body = buf.subarray(at + 8, at + 8 + length);
    if (crc32(buf.subarray(at + 4, at + 8 + length)) !== buf.readUInt32BE(at + 8 + length)) {
      throw new Error(`PNG chunk ${type}: bad CRC`);
    }
    if (type === "IHDR") {
      header = { width: body.readUInt32BE(0), height: body.readUInt32BE(4), depth: body[8] ?? 0, colour: body[9] ?? 0 };
    } else if (type === "IDAT") {
      data.push(body);
    } else if (type === "IEND") {
      break;
    }
    at += 12 + length;
  }
  if (header === undefined) {
    throw new Error("PNG without IHDR");
  }
  const bitsPerPixel = (SAMPLES[header.colour] ?? 0) * header.depth;
  const row = 1 + Math.ceil((header.width * bitsPerPixel) / 8); // a filter byte, then pixels
  const pixels = inflateSync(Buffer.concat(data));
  if (pixels.length !== row * header.height) {
    throw new Error(`PNG data is ${pixels.length} bytes, not ${row * header.height}`);
  }
  return { width: header.width, height: header.height };
}
