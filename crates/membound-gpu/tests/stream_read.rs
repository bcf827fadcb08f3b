//! The streaming-read floor kernel reads every word: its per-block XORs
//! match the CPU's, at whole, partial and single blocks.

mod common;

use common::{Rng, context};
use membound_gpu::{
    GpuBuffer, GpuFeatures, STREAM_BLOCK_BYTES, stream_read, stream_read_blocks,
    stream_read_reference, wgpu,
};

fn run(ctx: &membound_gpu::GpuContext, words: &[u32]) -> Vec<u32> {
    let src = GpuBuffer::from_bytes(
        ctx,
        "stream src",
        bytemuck::cast_slice(words),
        wgpu::BufferUsages::STORAGE,
    )
    .unwrap();
    let blocks = stream_read_blocks(src.size());
    let out = GpuBuffer::new(
        ctx,
        "stream out",
        blocks * 4,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
    .unwrap();
    let d = stream_read(ctx, &src, &out).unwrap();
    ctx.submit(&[&d]).unwrap();
    let bytes = out.read_bytes(ctx, 0, blocks * 4).unwrap();
    bytemuck::cast_slice(&bytes).to_vec()
}

#[test]
fn every_word_is_read() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let block_words = (STREAM_BLOCK_BYTES / 4) as usize;
    let mut rng = Rng::new(7);
    // One vec4; one block; a block and one vec4; many blocks and a partial.
    for n in [4, block_words, block_words + 4, 37 * block_words + 1236] {
        let words: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
        let want = stream_read_reference(&words);
        assert_eq!(want.len() as u64, stream_read_blocks(4 * n as u64));
        let got = run(&ctx, &words);
        assert_eq!(got, want, "{n} words");
        // A flipped bit anywhere changes its block's XOR: nothing was skipped.
        let mut flipped = words.clone();
        flipped[n - 1] ^= 1 << 17;
        let got = run(&ctx, &flipped);
        assert_ne!(got.last(), want.last(), "{n} words, last word flipped");
    }
}

#[test]
fn bad_sizes_are_refused_with_the_reason() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let usage = wgpu::BufferUsages::STORAGE;
    let odd = GpuBuffer::new(&ctx, "odd src", 20, usage).unwrap();
    let out = GpuBuffer::new(&ctx, "out", 4, usage).unwrap();
    let e = stream_read(&ctx, &odd, &out).unwrap_err().to_string();
    assert!(e.contains("odd src") && e.contains("multiple of 16"), "{e}");
    let big = GpuBuffer::new(&ctx, "big src", 2 * STREAM_BLOCK_BYTES, usage).unwrap();
    let e = stream_read(&ctx, &big, &out).unwrap_err().to_string();
    assert!(e.contains("`out`") && e.contains("needs 8"), "{e}");
}
