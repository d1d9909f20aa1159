/**
 * The TypeScript client of imagejobs: the generated messages and service (./gen, from
 * proto/ by `python scripts/gen_protos.py`) and `ImageJobsClient`, a thin typed helper.
 *
 *     const client = new ImageJobsClient("localhost:8080");
 *     const result = await client.generate("a red fox", { model: "mock/image-1", size: "512x512" });
 *     writeFileSync("fox.png", result.images[0].data);
 */

export * from "./client.js";
export * from "./errors.js";
export * from "./retry.js";
export * from "./gen/imagejobs/v1/jobs_pb.js";
