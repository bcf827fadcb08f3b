//! The run engine end to end: load a model with its tokenizer, prepare it,
//! decode on CPU and GPU, and generate text.

use std::sync::Arc;

use membound::Error;
use membound::model::WeightPlan;
use membound::run::{
    DeviceKind, Engine, EngineOptions, GenerateOptions, Model, StopReason, generate,
};
use membound::sample::{Sampler, SamplingParams};
use membound::tokenizer::{ChatMessage, chat_prompt};
use membound_gpu::{GpuContext, GpuError};
use membound_tensor::registry;

fn gpu() -> Option<Arc<GpuContext>> {
    match GpuContext::new() {
        Ok(ctx) => Some(Arc::new(ctx)),
        Err(e @ GpuError::NoAdapter { .. })
            if std::env::var("MEMBOUND_SKIP_GPU").as_deref() == Ok("1") =>
        {
            println!("SKIPPED (MEMBOUND_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn missing(model: &str) {
    assert!(
        std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{model} missing"
    );
    eprintln!("SKIPPED: {model} not found (membound models fetch, or ../shared/models)");
}

fn llama2xs() -> Option<Model> {
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        missing("llama2xs-280K");
        return None;
    };
    Some(Model::load(&path).unwrap())
}

fn opts(device: DeviceKind, spec: &str) -> EngineOptions {
    EngineOptions {
        device,
        plan: WeightPlan::uniform(spec),
        context: None,
        ..Default::default()
    }
}

const LILY: &str = "Once upon a time, there was a little girl named Lily.";

fn greedy_from_bos(engine: &mut Engine, n: usize) -> membound::run::Generation {
    let bos = engine.tokenizer().bos().unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy()).unwrap();
    let mut streamed = String::new();
    let g = engine
        .generate(&[bos], n, &mut sampler, &mut |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(streamed, g.text, "streamed text equals the returned text");
    g
}

#[test]
fn llama2xs_greedy_on_cpu() {
    let Some(model) = llama2xs() else { return };
    let mut e = Engine::new(&model, &opts(DeviceKind::Cpu, "f32"), None, &|_, _| {}).unwrap();
    let g = greedy_from_bos(&mut e, 20);
    assert!(g.text.starts_with(LILY), "{:?}", g.text);
    assert_eq!(g.tokens.len(), 20);
    assert_eq!(g.stats.stop, StopReason::MaxTokens);
    assert_eq!(g.stats.prompt_tokens, 1);
    assert_eq!(g.stats.decode_steps, 19);
    assert!(g.stats.decode_tokens_per_s.unwrap() > 0.0);
    assert!(g.stats.greedy);
    let info = e.info();
    assert_eq!(info.device, DeviceKind::Cpu);
    assert!(info.adapter.is_none());
    assert_eq!(
        info.weights_summary(),
        "f32 ×20 matrices, f32 classifier, f32 embedding"
    );
}

#[test]
fn llama2xs_greedy_on_gpu() {
    let Some(model) = llama2xs() else { return };
    let Some(ctx) = gpu() else { return };
    for spec in ["f32", "f16"] {
        let mut e = Engine::new(
            &model,
            &opts(DeviceKind::Gpu, spec),
            Some(Arc::clone(&ctx)),
            &|_, _| {},
        )
        .unwrap();
        let g = greedy_from_bos(&mut e, 20);
        assert!(g.text.starts_with(LILY), "{spec}: {:?}", g.text);
        let info = e.info();
        assert!(info.adapter.is_some());
        assert!(info.bytes_read_per_token > 0 && info.kv_cache_bytes > 0);
        assert_eq!(info.modes[0].spec, spec);
    }
}

/// On the GPU, greedy generation runs in bursts of `GREEDY_BURST` steps
/// without the host in between: a stop token inside a burst (and the token
/// budget, and the end of the context) end generation exactly where
/// step-by-step decoding on the CPU ends it.
#[test]
fn gpu_greedy_bursts_stop_where_the_cpu_stops() {
    let Some(model) = llama2xs() else { return };
    let Some(ctx) = gpu() else { return };
    let mut cpu = Engine::new(&model, &opts(DeviceKind::Cpu, "f32"), None, &|_, _| {}).unwrap();
    let mut o = opts(DeviceKind::Gpu, "f32");
    o.context = Some(24);
    let mut gpu = Engine::new(&model, &o, Some(ctx), &|_, _| {}).unwrap();
    let bos = cpu.tokenizer().bos().unwrap();
    let tok = cpu.tokenizer().clone();
    let all = greedy_from_bos(&mut cpu, 20).tokens;
    const { assert!(membound::run::GREEDY_BURST < 10) };
    // The 11th token is a stop token: inside the second burst.
    for (stop_ids, max_tokens, context) in
        [(vec![all[10]], 20, 24), (vec![], 13, 24), (vec![], 40, 17)]
    {
        let go = GenerateOptions {
            max_tokens,
            stop_ids: stop_ids.clone(),
            start_pos: 0,
            context,
            skip_leading_space: false,
        };
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        let want = generate(cpu.decoder_mut(), &tok, &[bos], &mut s, &go, &mut |_| {}).unwrap();
        let mut streamed = String::new();
        let got = generate(gpu.decoder_mut(), &tok, &[bos], &mut s, &go, &mut |t| {
            streamed.push_str(t)
        })
        .unwrap();
        assert_eq!(
            got.tokens, want.tokens,
            "{stop_ids:?} {max_tokens} {context}"
        );
        assert_eq!(got.text, want.text);
        assert_eq!(streamed, got.text);
        assert_eq!(got.stop_token, want.stop_token);
        assert_eq!(got.stats.stop, want.stats.stop);
        assert_eq!(got.next_pos, want.next_pos);
        assert_eq!(got.stats.decode_steps, want.stats.decode_steps);
    }
}

/// Sampling reads logits; a fixed seed repeats itself and differs from
/// greedy somewhere at high temperature.
#[test]
fn llama2xs_sampling_is_seeded() {
    let Some(model) = llama2xs() else { return };
    let mut e = Engine::new(&model, &opts(DeviceKind::Cpu, "f32"), None, &|_, _| {}).unwrap();
    let prompt = e.encode_prompt("Once upon a time").unwrap();
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 40,
        top_p: 0.95,
        seed: 7,
    };
    let mut run = || {
        let mut s = Sampler::new(params).unwrap();
        e.generate(&prompt, 30, &mut s, &mut |_| {}).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.tokens, b.tokens);
    assert!(!a.stats.greedy);
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let Some(model) = llama2xs() else { return };
    let mut o = opts(DeviceKind::Cpu, "f32");
    o.context = Some(16);
    let mut e = Engine::new(&model, &o, None, &|_, _| {}).unwrap();
    let long = e
        .encode_prompt(&"Once upon a time there was a dog. ".repeat(8))
        .unwrap();
    assert!(long.len() > 16);
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    match e.generate(&long, 5, &mut s, &mut |_| {}) {
        Err(Error::Request(m)) => assert!(m.contains("context of 16"), "{m}"),
        other => panic!("expected a request error, got {other:?}"),
    }
    // A prompt that fits but leaves little room stops at the context's end.
    let short = &long[..12];
    let g = e.generate(short, 50, &mut s, &mut |_| {}).unwrap();
    assert_eq!(g.stats.stop, StopReason::Context);
    assert_eq!(g.next_pos, 16);
    assert_eq!(g.tokens.len(), 5);
    // So does an empty prompt.
    assert!(matches!(
        e.generate(&[], 5, &mut s, &mut |_| {}),
        Err(Error::Request(_))
    ));
    // And a context past the model's.
    let mut o = opts(DeviceKind::Cpu, "f32");
    o.context = Some(model.config.max_seq_len + 1);
    assert!(Engine::new(&model, &o, None, &|_, _| {}).is_err());
}

/// Continuing from a cached prefix gives what one pass over the whole
/// prompt gives.
#[test]
fn cached_prefix_continues_exactly() {
    let Some(model) = llama2xs() else { return };
    let mut e = Engine::new(&model, &opts(DeviceKind::Cpu, "f32"), None, &|_, _| {}).unwrap();
    let ids = e
        .encode_prompt("Once upon a time, there was a big dog")
        .unwrap();
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    let whole = e.generate(&ids, 8, &mut s, &mut |_| {}).unwrap();
    let tok = e.tokenizer().clone();
    let ctx = e.context();
    let mut run = |ids: &[u32], start: usize| {
        let o = GenerateOptions {
            max_tokens: 8,
            stop_ids: vec![],
            start_pos: start,
            context: ctx,
            skip_leading_space: false,
        };
        generate(e.decoder_mut(), &tok, ids, &mut s, &o, &mut |_| {}).unwrap()
    };
    run(&ids[..4], 0);
    let rest = run(&ids[4..], 4);
    assert_eq!(rest.tokens, whole.tokens);
}

fn smollm2_capital(device: DeviceKind, ctx: Option<Arc<GpuContext>>) {
    let Some(path) = registry::SMOLLM2.locate() else {
        return missing("smollm2");
    };
    let model = Model::load(&path).unwrap();
    let mut o = opts(device, "f32");
    o.context = Some(256);
    let mut e = Engine::new(&model, &o, ctx, &|_, _| {}).unwrap();
    let prompt = chat_prompt(
        &[ChatMessage::new("user", "What is the capital of France?")],
        true,
    );
    let ids = e.tokenizer().encode(&prompt, false).unwrap();
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    let g = e.generate(&ids, 20, &mut s, &mut |_| {}).unwrap();
    assert!(g.text.contains("Paris"), "{device}: {:?}", g.text);
}

#[test]
fn smollm2_knows_the_capital_of_france_on_cpu() {
    smollm2_capital(DeviceKind::Cpu, None);
}

#[test]
fn smollm2_knows_the_capital_of_france_on_gpu() {
    if registry::SMOLLM2.locate().is_none() {
        return missing("smollm2");
    }
    let Some(ctx) = gpu() else { return };
    smollm2_capital(DeviceKind::Gpu, Some(ctx));
}

/// The builder loads, prepares and reports the plan it ran.
#[test]
fn builder_reports_the_plan() {
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        return missing("llama2xs-280K");
    };
    let mut plan = WeightPlan::uniform("affine:bits=4,group=64");
    plan.classifier = Some("f16".into());
    let e = Engine::builder(&path)
        .device(DeviceKind::Cpu)
        .plan(plan)
        .context(Some(64))
        .build(&|_, _| {})
        .unwrap();
    let info = e.info();
    assert_eq!(info.context, 64);
    assert_eq!(
        info.weights_summary(),
        "affine:bits=4,group=64,scale=f16 ×20 matrices, f16 classifier, f16 embedding"
    );
    assert!(info.stored_bytes_per_token < info.bytes_read_per_token);
    assert!(
        Engine::builder(&path)
            .plan(WeightPlan::uniform("svd:rank=4"))
            .build(&|_, _| {})
            .is_err()
    );
}
