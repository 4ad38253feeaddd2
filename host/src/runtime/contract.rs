//! Which release of the `durable:workflow` contract a component was built
//! against, and one way to call its exports whatever the release.
//!
//! The linker provides the imports of every release at once (each under
//! its own versioned name, the older ones delegating to the current one in
//! `compat`), so only the exports tell releases apart: 0.2.0 and later
//! return a `step-error` record, 0.1.0 a plain message.

use wasmtime::Engine;
use wasmtime::component::InstancePre;

use super::host::HostState;
use super::memory_image;
use crate::bindings::{v0_1, v0_3};
use crate::engine::StepRun;
use crate::store::{Failure, Outcome};

/// A component ready to instantiate, by the release of its exports.
#[derive(Clone)]
pub(super) enum ContractPre {
    /// 0.2.0 and later: the exports have not changed since.
    StepErrors(v0_3::WorkflowPre<HostState>),
    /// 0.1.0.
    TextErrors(v0_1::WorkflowPre<HostState>),
}

/// One instance of a workflow component.
pub(super) enum ContractInstance {
    StepErrors(v0_3::Workflow),
    TextErrors(v0_1::Workflow),
}

impl ContractPre {
    /// Check the exports against each release, the current one first. The
    /// error is the current release's: what a new build must export.
    pub fn new(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        match v0_3::WorkflowPre::new(pre.clone()) {
            Ok(current) => Ok(Self::StepErrors(current)),
            Err(error) => v0_1::WorkflowPre::new(pre)
                .map(Self::TextErrors)
                .map_err(|_| error),
        }
    }

    pub fn engine(&self) -> &Engine {
        match self {
            Self::StepErrors(pre) => pre.engine(),
            Self::TextErrors(pre) => pre.engine(),
        }
    }

    pub fn component(&self) -> &wasmtime::component::Component {
        match self {
            Self::StepErrors(pre) => pre.instance_pre().component(),
            Self::TextErrors(pre) => pre.instance_pre().component(),
        }
    }

    /// A new instance, the component's memory images made first (see
    /// [`memory_image`]).
    pub fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<ContractInstance> {
        memory_image(self.component())?;
        Ok(match self {
            Self::StepErrors(pre) => ContractInstance::StepErrors(pre.instantiate(store)?),
            Self::TextErrors(pre) => ContractInstance::TextErrors(pre.instantiate(store)?),
        })
    }
}

impl ContractInstance {
    /// The workflow's `run` export.
    pub fn call_run(
        &self,
        store: &mut wasmtime::Store<HostState>,
        input: &str,
    ) -> wasmtime::Result<Outcome> {
        Ok(match self {
            Self::StepErrors(workflow) => workflow.call_run(store, input)?.map_err(Failure::from),
            Self::TextErrors(workflow) => workflow.call_run(store, input)?.map_err(Failure::new),
        })
    }

    /// The workflow's `run-branch` export, for the branch `step`.
    pub fn call_run_branch(
        &self,
        store: &mut wasmtime::Store<HostState>,
        entry: &str,
        step: &StepRun,
        input: &str,
    ) -> wasmtime::Result<Outcome> {
        Ok(match self {
            Self::StepErrors(workflow) => workflow
                .call_run_branch(store, entry, &step.into(), input)?
                .map_err(Failure::from),
            Self::TextErrors(workflow) => workflow
                .call_run_branch(store, entry, &step.into(), input)?
                .map_err(Failure::new),
        })
    }
}
