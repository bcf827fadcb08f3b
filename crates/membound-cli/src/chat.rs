//! `membound chat`: a multi-turn conversation that keeps the KV cache.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use membound::run::{GenerateOptions, common_prefix, generate};
use membound::tokenizer::{ChatMessage, chat_prompt};
use serde::Serialize;

use crate::generate::{ModelArgs, SamplingArgs, Stats, build_engine, has_chatml, print_engine};

/// Chat with a model over stdin, keeping the KV cache across turns.
///
/// Each turn renders the whole conversation with SmolLM2-Instruct's ChatML
/// template, but only the tokens the KV cache does not already hold are fed
/// (the earlier turns stay cached); a reply ends at the end-of-turn token
/// or after --max-tokens. When the conversation outgrows --context, /reset
/// starts over.
///
/// Commands, alone on a line: /reset forgets the conversation, /quit (or
/// end of input, Ctrl-D) exits.
///
/// With --json, each input line is one user message and each reply is one
/// line of JSON on stdout ({"reply", "tokens", "stats", ...}), for scripts.
///
/// Examples:
///   membound chat
///   membound chat --weights affine:bits=4,group=64 --system "You answer in one sentence."
///   printf 'What is the capital of France?\nAnd of Italy?\n' | membound chat --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The system message [default: the template's, "You are a helpful AI
    /// assistant named SmolLM, trained by Hugging Face"].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, short = 'n', default_value_t = 256, value_name = "N")]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Read one user message per line, print one JSON reply per line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Reply<'a> {
    reply: &'a str,
    tokens: &'a [u32],
    /// Prompt tokens reused from the KV cache.
    cached_tokens: usize,
    /// Positions of the KV cache in use after the reply.
    context_used: usize,
    stats: Stats<'a>,
}

pub fn run(args: Args) -> Result<()> {
    let opts = args.model.options()?;
    let mut sampler = args.sampling.sampler()?;
    let gpu = args.model.gpu()?;
    let model = args.model.load()?;
    let mut engine = build_engine(&model, &opts, gpu, "preparing")?;
    drop(model);
    let info = engine.info().clone();
    let tok = engine.tokenizer().clone();
    if !has_chatml(&tok) {
        eprintln!(
            "warning: this model's vocabulary has no ChatML tokens (<|im_start|>); it was not \
             trained to chat and replies will be poor"
        );
    }
    let interactive = std::io::stdin().is_terminal() && !args.json;
    if !args.json {
        print_engine(&info);
        eprintln!("commands: /reset, /quit (or Ctrl-D)\n");
    }
    let fresh = || -> Vec<ChatMessage> {
        args.system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .collect()
    };
    let mut messages = fresh();
    // The ids at positions 0.. of the KV cache.
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim_end_matches(['\r', '\n']);
        match text.trim() {
            "/quit" | "/exit" => break,
            "/reset" => {
                messages = fresh();
                cached.clear();
                if args.json {
                    println!("{}", serde_json::json!({"reset": true}));
                } else {
                    eprintln!("(conversation reset)");
                }
                continue;
            }
            "" if !args.json => continue,
            _ => {}
        }
        messages.push(ChatMessage::new("user", text));
        let ids = tok.encode(&chat_prompt(&messages, true), true)?;
        // Feed only what the cache lacks (at least one token, for logits).
        let reuse = common_prefix(&cached, &ids).min(ids.len() - 1);
        let gen_opts = GenerateOptions {
            max_tokens: args.max_tokens,
            stop_ids: tok.stop_ids(),
            start_pos: reuse,
            context: engine.context(),
            skip_leading_space: false,
        };
        let json = args.json;
        let mut on_text = |t: &str| {
            if !json {
                let _ = write!(out, "{t}").and_then(|()| out.flush());
            }
        };
        let result = generate(
            engine.decoder_mut(),
            &tok,
            &ids[reuse..],
            &mut sampler,
            &gen_opts,
            &mut on_text,
        );
        let g = match result {
            Ok(g) => g,
            Err(membound::Error::Request(m)) => {
                messages.pop();
                let m = format!("{m} (/reset starts a new conversation)");
                if args.json {
                    println!("{}", serde_json::json!({ "error": m }));
                } else {
                    eprintln!("error: {m}");
                }
                continue;
            }
            Err(e) => bail!(e),
        };
        cached = ids.clone();
        cached.extend_from_slice(&g.tokens[..g.next_pos - ids.len()]);
        messages.push(ChatMessage::new("assistant", g.text.trim()));
        if args.json {
            let r = Reply {
                reply: g.text.trim(),
                tokens: &g.tokens,
                cached_tokens: reuse,
                context_used: g.next_pos,
                stats: Stats::new(&g, &info),
            };
            println!("{}", serde_json::to_string(&r)?);
            std::io::stdout().flush()?;
        } else {
            println!();
            let tps = g
                .stats
                .decode_tokens_per_s
                .map_or_else(|| "-".into(), |t| format!("{t:.1}"));
            eprintln!(
                "[{} tokens, {tps} tok/s; {} prompt tokens fed, {reuse} reused; context {}/{}]",
                g.tokens.len(),
                g.stats.prompt_tokens,
                g.next_pos,
                engine.context()
            );
        }
    }
    Ok(())
}
