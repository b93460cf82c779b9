//! Kind `command`: run any program (no shell) as a stage, so that users can plug in lm-eval-harness or
//! their own scripts, and so that tests can exercise the runner with real processes.
//!
//! ```toml
//! [stages.eval]
//! kind = "command"
//! argv = ["python3", "{inputs.script}", "--model", "{inputs.model}", "--out", "{out}"]
//! env = { HF_HOME = "/tmp/hf" }
//! inputs = { model = { stage = "train" }, script = { path = "eval.py" } }
//! ```
//!
//! Placeholders: `{inputs.NAME}` (materialised input path), `{out}` (output folder), `{scratch}`
//! (persistent scratch folder, also the working directory), `{{`/`}}` for literal braces. The program's
//! stdout and stderr go to the stage log line by line; a non-zero exit fails the stage.
//!
//! The program does not inherit the whole environment of `sheared`, which may hold credentials (cloud
//! keys, tokens) a recipe from elsewhere has no business reading: only [`PASSED_ENV`] (paths, locale,
//! certificates, proxies, package-index settings, GPU visibility, thread counts), the names a recipe
//! lists in `pass_env = ["HF_TOKEN"]`, and `env` reach it. Its outputs must be plain files and folders:
//! a symbolic link in `{out}` (which would commit whatever it points at, anywhere on the machine) fails
//! the stage.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::stage::{InputRef, Stage, StageContext, StageError, normalize_typed};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CommandConfig {
    /// Program and arguments; no shell is involved (write `["/bin/sh", "-c", ".."]` if you want one).
    argv: Vec<String>,
    /// Extra environment variables (placeholders allowed in values).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Named inputs, referred to as `{inputs.NAME}`.
    #[serde(default)]
    inputs: BTreeMap<String, InputRef>,
    /// Variables of `sheared`'s environment passed on besides [`PASSED_ENV`] (e.g. `HF_TOKEN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pass_env: Vec<String>,
}

/// What a command inherits from `sheared`'s environment without asking: exact names, and prefixes
/// ending in `_`. Nothing here is a credential; everything a program needs to find itself, its
/// libraries, its certificates, its proxies and package indexes, and its GPUs is.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYENV_ROOT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NIX_SSL_CERT_FILE",
    "GIT_SSL_CAINFO",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_DATASETS_CACHE",
    "TRANSFORMERS_CACHE",
    "LC_",
    "PIP_",
    "SLURM_",
];

/// Whether `name` passes [`PASSED_ENV`] (entries ending in `_` are prefixes) or the recipe's `pass_env`.
fn passes(name: &str, pass_env: &[String]) -> bool {
    PASSED_ENV.iter().any(|allowed| {
        if allowed.ends_with('_') {
            name.starts_with(allowed)
        } else {
            name == *allowed
        }
    }) || pass_env.iter().any(|passed| passed == name)
}

/// The first symbolic link under `dir`, if any (outputs must be plain files and folders).
fn first_symlink(dir: &std::path::Path) -> std::io::Result<Option<std::path::PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            return Ok(Some(entry.path()));
        }
        if kind.is_dir()
            && let Some(found) = first_symlink(&entry.path())?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

pub struct CommandStage;

impl Stage for CommandStage {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "run a program (no shell) with {inputs.NAME}, {out}, {scratch} placeholders"
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        normalize_typed::<CommandConfig>(table).map(|(_, table)| table)
    }
    /// A command sees no run-wide settings, so none enter its key.
    fn settings_in_key(&self) -> &'static [&'static str] {
        &[]
    }
    fn validate(&self, config: &toml::Table) -> Result<(), StageError> {
        let (config, _) = normalize_typed::<CommandConfig>(config)?;
        if config.argv.first().is_none_or(|program| program.is_empty()) {
            return Err(StageError::config(
                "argv",
                "needs at least the program, e.g. `argv = [\"python3\", \"script.py\"]`",
            ));
        }
        let known = |name: &str| {
            matches!(name, "out" | "scratch")
                || name
                    .strip_prefix("inputs.")
                    .is_some_and(|input| config.inputs.contains_key(input))
        };
        for (index, argument) in config.argv.iter().enumerate() {
            substitute(argument, &|name| known(name).then(String::new))
                .map_err(|message| StageError::config(format!("argv.{index}"), message))?;
        }
        for (name, value) in &config.env {
            substitute(value, &|name| known(name).then(String::new))
                .map_err(|message| StageError::config(format!("env.{name}"), message))?;
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let (config, _) = normalize_typed::<CommandConfig>(ctx.config)?;
        let lookup = |name: &str| -> Option<String> {
            match name {
                "out" => Some(ctx.out_dir.display().to_string()),
                "scratch" => Some(ctx.scratch_dir.display().to_string()),
                _ => ctx.inputs.get(name).map(|path| path.display().to_string()),
            }
        };
        let argv: Vec<String> = config
            .argv
            .iter()
            .enumerate()
            .map(|(index, argument)| {
                substitute(argument, &lookup)
                    .map_err(|message| StageError::config(format!("argv.{index}"), message))
            })
            .collect::<Result<_, _>>()?;
        let Some((program, arguments)) = argv.split_first() else {
            return Err(StageError::config("argv", "needs at least the program"));
        };
        let mut command = Command::new(program);
        command
            .args(arguments)
            .current_dir(&ctx.scratch_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| {
                name.to_str()
                    .is_some_and(|name| passes(name, &config.pass_env))
            }));
        for (name, value) in &config.env {
            command.env(
                name,
                substitute(value, &lookup)
                    .map_err(|message| StageError::config(format!("env.{name}"), message))?,
            );
        }
        // Its own process group, so that cancelling stops the program and everything it started
        // (a shell's children too), not only the direct child.
        command.process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{program}`"))?;
        let forwarders: Vec<_> = [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let (sender, receiver) = std::sync::mpsc::channel::<String>();
            let handle = std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    match line {
                        Ok(line) => {
                            if sender.send(line).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
            (handle, receiver)
        })
        .collect();
        let drain = |forwarders: &[(
            std::thread::JoinHandle<()>,
            std::sync::mpsc::Receiver<String>,
        )]| {
            for (_, receiver) in forwarders {
                while let Ok(line) = receiver.try_recv() {
                    ctx.reporter.message(&line);
                }
            }
        };
        let status = loop {
            drain(&forwarders);
            if ctx.cancel.is_cancelled() {
                stop_group(&mut child);
                return Err(StageError::Cancelled);
            }
            match child.try_wait().context("waiting for the program")? {
                Some(status) => break status,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        for (handle, receiver) in forwarders {
            let _ = handle.join();
            while let Ok(line) = receiver.try_recv() {
                ctx.reporter.message(&line);
            }
        }
        if status.success() {
            match first_symlink(&ctx.out_dir).context("checking the outputs")? {
                Some(link) => Err(StageError::Other(anyhow::anyhow!(
                    "`{}` left a symbolic link among its outputs: {} → {}; a stage's outputs must be plain files \
                     (copy the target into {{out}} instead, e.g. `cp -L`)",
                    argv.join(" "),
                    link.display(),
                    std::fs::read_link(&link)
                        .map(|target| target.display().to_string())
                        .unwrap_or_else(|_| "?".into())
                ))),
                None => Ok(()),
            }
        } else {
            Err(StageError::Other(anyhow::anyhow!(
                "`{}` failed ({status})",
                argv.join(" ")
            )))
        }
    }
}

/// SIGTERM the child's process group, then SIGKILL it if it has not exited within 5 s.
fn stop_group(child: &mut std::process::Child) {
    let group = -(child.id() as libc::pid_t);
    // SAFETY: kill(2) on the process group we created for this child.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // The group may still have members (a shell's children); make sure they go too.
            unsafe { libc::kill(group, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}

/// Replace `{name}` placeholders through `lookup`; `{{` and `}}` are literal braces.
fn substitute(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut output = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(index) = rest.find(['{', '}']) {
        output.push_str(&rest[..index]);
        let tail = &rest[index..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            output.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` in `{template}` (write `}}}}` for a literal brace)"
            ));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "unclosed `{{` in `{template}` (write `{{{{` for a literal brace)"
                ));
            };
            let name = &tail[1..end];
            match lookup(name) {
                Some(value) => output.push_str(&value),
                None => {
                    return Err(format!(
                        "unknown placeholder `{{{name}}}` in `{template}`: use {{out}}, {{scratch}} or {{inputs.NAME}} with NAME a key of `inputs`"
                    ));
                }
            }
            rest = &tail[end + 1..];
        }
    }
    output.push_str(rest);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let lookup = |name: &str| (name == "out").then(|| "/o".to_string());
        assert_eq!(
            substitute("--out={out}/x {{lit}}", &lookup).unwrap(),
            "--out=/o/x {lit}"
        );
        assert!(
            substitute("{inputs.nope}", &lookup)
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(substitute("{out", &lookup).is_err());
    }

    #[test]
    fn validate_rejects_unknown_inputs() {
        let table: toml::Table = toml::from_str("argv = [\"echo\", \"{inputs.model}\"]").unwrap();
        let config = CommandStage.normalize(&table).unwrap();
        match CommandStage.validate(&config) {
            Err(StageError::Config { key, .. }) => assert_eq!(key, "argv.1"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
