//! The streaming-read floor kernel reads every word: data crafted so that
//! one chosen thread of each block XORs to the magic value makes exactly
//! those threads write, and flipping any one of a chosen thread's words
//! silences it. Whole, partial and single blocks, and other launches.

mod common;

use common::{Rng, context};
use membound_gpu::{
    GpuBuffer, GpuContext, GpuFeatures, STREAM_BLOCK_BYTES, StreamLaunch, random_buffers,
    stream_read, stream_read_blocks, stream_read_with, stream_read_xors, wgpu,
};

const MAGIC: u32 = 0x5eed_f00d;

fn run(ctx: &GpuContext, words: &[u32], launch: StreamLaunch) -> Vec<u32> {
    let src = GpuBuffer::from_bytes(
        ctx,
        "stream src",
        bytemuck::cast_slice(words),
        wgpu::BufferUsages::STORAGE,
    )
    .unwrap();
    let blocks = launch.blocks(src.size());
    let out = GpuBuffer::new(
        ctx,
        "stream out",
        blocks * 4,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    )
    .unwrap();
    let d = stream_read_with(ctx, &src, &out, MAGIC, launch).unwrap();
    ctx.submit(&[&d]).unwrap();
    let bytes = out.read_bytes(ctx, 0, blocks * 4).unwrap();
    bytemuck::cast_slice(&bytes).to_vec()
}

/// Random words, then in each block one thread's first word adjusted so
/// that its XOR is MAGIC; returns the words, the chosen threads and, per
/// chosen thread, the index of its last word (in its last load).
fn crafted(n: usize, launch: StreamLaunch, rng: &mut Rng) -> (Vec<u32>, Vec<u32>, Vec<usize>) {
    let mut words: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
    let threads = launch.threads as usize;
    let per_block = (launch.loads * launch.rounds) as usize;
    let vec4s = n / 4;
    let xors = stream_read_xors(&words, launch);
    let blocks = launch.blocks(4 * n as u64) as usize;
    let (mut chosen, mut last) = (Vec::new(), Vec::new());
    for b in 0..blocks {
        // A thread with at least one vec4 in this block.
        let first = b * per_block * threads;
        let span = (vec4s - first).min(threads);
        let t = (rng.next_u64() % span as u64) as usize;
        words[4 * (first + t)] ^= xors[b * threads + t] ^ MAGIC;
        let mut loads = (0..per_block)
            .map(|j| first + j * threads + t)
            .filter(|&i| i < vec4s);
        last.push(4 * loads.next_back().unwrap() + 3);
        chosen.push(t as u32 + 1);
    }
    let xors = stream_read_xors(&words, launch);
    let matching = xors.iter().filter(|&&x| x == MAGIC).count();
    assert_eq!(matching, blocks, "the crafted data has stray matches");
    (words, chosen, last)
}

fn check(ctx: &GpuContext, n: usize, launch: StreamLaunch, rng: &mut Rng) {
    let (words, chosen, last) = crafted(n, launch, rng);
    assert_eq!(run(ctx, &words, launch), chosen, "{n} words, {launch:?}");
    // Flip a bit of each chosen thread's last word: none may still write.
    let mut flipped = words.clone();
    for &i in &last {
        flipped[i] ^= 1 << 17;
    }
    assert!(
        run(ctx, &flipped, launch).iter().all(|&o| o == 0),
        "{n} words, {launch:?}: a thread wrote without its last word"
    );
}

#[test]
fn every_word_is_read() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let block_words = (STREAM_BLOCK_BYTES / 4) as usize;
    assert_eq!(stream_read_blocks(STREAM_BLOCK_BYTES + 16), 2);
    let mut rng = Rng::new(7);
    // One vec4; one block; a block and one vec4; many blocks and a partial.
    for n in [4, block_words, block_words + 4, 37 * block_words + 1236] {
        check(&ctx, n, StreamLaunch::default(), &mut rng);
    }
}

#[test]
fn other_launches_read_every_word_too() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let mut rng = Rng::new(11);
    for (threads, loads, rounds) in [
        (32, 1, 1),
        (64, 8, 3),
        (128, 3, 2),
        (256, 16, 1),
        (128, 4, 8),
    ] {
        let launch = StreamLaunch {
            threads,
            loads,
            rounds,
        };
        check(&ctx, 70_000, launch, &mut rng);
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
    let launch = StreamLaunch {
        threads: 96,
        loads: 4,
        rounds: 1,
    };
    let e = stream_read_with(&ctx, &big, &out, 0, launch)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("96 threads") && e.contains("power of two"),
        "{e}"
    );
}

/// The floor's copies: as many as asked, of the size asked, each different
/// (seed i), and the same for the same seed.
#[test]
fn random_buffers_are_distinct_and_reproducible() {
    let Some(ctx) = context(GpuFeatures::NONE) else {
        return;
    };
    let size = 3 * 4096;
    let a = random_buffers(&ctx, "copy", size, 3).unwrap();
    let b = random_buffers(&ctx, "again", size, 1).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[2].name(), "copy #2");
    let words = |buf: &GpuBuffer| -> Vec<u32> {
        assert_eq!(buf.size(), size);
        bytemuck::pod_collect_to_vec(&buf.read_bytes(&ctx, 0, size).unwrap())
    };
    let (w0, w1, w2) = (words(&a[0]), words(&a[1]), words(&a[2]));
    assert!(w0 != w1 && w1 != w2 && w0 != w2);
    assert_eq!(words(&b[0]), w0);
    // Random bits: about half of them set.
    let ones: u32 = w1.iter().map(|w| w.count_ones()).sum();
    let bits = size as u32 * 8;
    assert!(
        ones.abs_diff(bits / 2) < bits / 50,
        "{ones} of {bits} bits set"
    );
}
