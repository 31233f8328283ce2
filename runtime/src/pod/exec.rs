//! The executor libcontainer's init process runs the container's command
//! with.
//!
//! libcontainer's default executor installs the container's environment with
//! `std::env::set_var`/`remove_var` in the freshly cloned init process. Those
//! take std's process-wide environment lock for writing; the clone copies the
//! agent's memory as it was, so if any other agent thread held that lock
//! (reading an environment variable, spawning a `Command`) at the moment of
//! the clone, the init process waits forever on a lock nobody will release.
//! This executor never touches the process environment: it keeps the
//! environment it is given and passes it to `execve` with an executable path
//! resolved against the container's own `PATH`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};

/// Runs the spec's `process.args` with `execve`, the environment passed
/// explicitly (see the module docs).
#[derive(Clone, Default)]
pub struct EnvSafeExecutor {
    env: Rc<RefCell<Vec<CString>>>,
}

fn resolve(name: &str, env: &[CString]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path_var = env
        .iter()
        .filter_map(|e| e.to_str().ok())
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::spec::DEFAULT_PATH);
    path_var
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl Executor for EnvSafeExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        let env = self.env.borrow().clone();
        let path = resolve(&args[0], &env).ok_or_else(|| {
            ExecutorError::Other(format!("executable {:?} not found in $PATH", args[0]))
        })?;
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let err = nix::unistd::execve(&path, &argv, &env).unwrap_err();
        Err(ExecutorError::Execution(
            format!("executing {path:?}: {err}").into(),
        ))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        let mut entries: Vec<CString> = Vec::with_capacity(envs.len());
        for (k, v) in envs {
            let entry = CString::new(format!("{k}={v}")).map_err(|_| {
                ExecutorSetEnvsError::Other(format!("environment variable {k} contains a NUL byte"))
            })?;
            entries.push(entry);
        }
        entries.sort();
        *self.env.borrow_mut() = entries;
        Ok(())
    }
}
