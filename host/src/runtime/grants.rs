//! What a workflow is granted (directories, environment, HTTP destinations,
//! limits), recorded
//! when it starts so that every resume runs it the same way.
//!
//! A resume that names no grants uses the recorded ones; one that names
//! others is refused with the difference, since quietly granting less can
//! fail a workflow for good (a step that needs its directory uses up its
//! retries) and granting more widens a sandbox nobody reviewed. Only
//! `durable-host resume` may change them, and it records the change.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DirGrant, HttpDestination, Sandbox};

/// The sandbox and limits of a workflow, as recorded with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub dirs: Vec<RecordedDir>,
    /// Recorded in the database in the clear: do not pass secrets this way.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Absent from the grants of workflows that may send no requests, as
    /// from those recorded before outbound HTTP existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpDestination>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_memory: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDir {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// A resume asked for other grants than the workflow started with.
#[derive(Debug, thiserror::Error)]
#[error("workflow {workflow_id} was started with other grants: {}", .differences.join("; "))]
pub struct GrantsError {
    pub workflow_id: String,
    pub differences: Vec<String>,
}

impl Grants {
    pub fn new(sandbox: &Sandbox, timeout: Option<Duration>, max_memory: Option<usize>) -> Self {
        Self {
            dirs: sandbox
                .dirs
                .iter()
                .map(|dir| RecordedDir {
                    host: std::path::absolute(&dir.host).unwrap_or_else(|_| dir.host.clone()),
                    guest: dir.guest.clone(),
                    read_only: dir.read_only,
                })
                .collect(),
            env: sandbox.env.clone(),
            http: sandbox.http.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            max_memory,
        }
        .normalized()
    }

    /// The same grants in a canonical form: directories and variables in
    /// order, paths without `.` or trailing `/`, so that equal grants
    /// compare equal however they were written.
    fn normalized(mut self) -> Self {
        for dir in &mut self.dirs {
            dir.host = dir.host.components().collect();
        }
        self.dirs
            .sort_by(|a, b| (&a.guest, &a.host).cmp(&(&b.guest, &b.host)));
        self.dirs.dedup();
        self.env.sort();
        self.env.dedup();
        self.http.sort();
        self.http.dedup();
        self
    }

    /// Nothing granted and no limits: what a command line that names no
    /// grants asks for.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn sandbox(&self) -> Sandbox {
        Sandbox {
            dirs: self
                .dirs
                .iter()
                .map(|dir| DirGrant {
                    host: dir.host.clone(),
                    guest: dir.guest.clone(),
                    read_only: dir.read_only,
                })
                .collect(),
            env: self.env.clone(),
            http: self.http.clone(),
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("grants are plain data")
    }

    /// The recorded grants, or `None` for a workflow recorded before grants
    /// were (or with grants this build cannot read).
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str::<Self>(json)
            .ok()
            .map(Self::normalized)
    }

    /// Check `given` (from a command line) against what `workflow_id` was
    /// recorded with, and say which grants to run with.
    pub fn for_resume(
        workflow_id: &str,
        recorded: Option<&Self>,
        given: Self,
    ) -> Result<Self, GrantsError> {
        let given = given.normalized();
        match recorded.map(|r| r.clone().normalized()) {
            None => Ok(given),
            Some(recorded) if given.is_empty() || given == recorded => Ok(recorded),
            Some(recorded) => Err(GrantsError {
                workflow_id: workflow_id.to_owned(),
                differences: recorded.differences(&given),
            }),
        }
    }

    /// What `given` grants differently from `self`, for people.
    pub fn differences(&self, given: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let show_dir = |d: &RecordedDir| {
            format!(
                "--dir {}::{}{}",
                d.host.display(),
                d.guest,
                if d.read_only { " (read-only)" } else { "" }
            )
        };
        for dir in &self.dirs {
            if !given.dirs.contains(dir) {
                out.push(format!(
                    "{} was granted at the start, not now",
                    show_dir(dir)
                ));
            }
        }
        for dir in &given.dirs {
            if !self.dirs.contains(dir) {
                out.push(format!(
                    "{} is granted now, not at the start",
                    show_dir(dir)
                ));
            }
        }
        for (key, value) in &self.env {
            match given.env.iter().find(|(k, _)| k == key) {
                None => out.push(format!("--env {key} was set at the start, not now")),
                Some((_, now)) if now != value => {
                    out.push(format!("--env {key} has another value than at the start"))
                }
                Some(_) => {}
            }
        }
        for (key, _) in &given.env {
            if !self.env.iter().any(|(k, _)| k == key) {
                out.push(format!("--env {key} is set now, not at the start"));
            }
        }
        for destination in &self.http {
            if !given.http.contains(destination) {
                out.push(format!(
                    "--allow-http {destination} was granted at the start, not now"
                ));
            }
        }
        for destination in &given.http {
            if !self.http.contains(destination) {
                out.push(format!(
                    "--allow-http {destination} is granted now, not at the start"
                ));
            }
        }
        let ms = |v: Option<u64>| v.map_or("none".to_owned(), |ms| format!("{ms}ms"));
        if self.timeout_ms != given.timeout_ms {
            out.push(format!(
                "--timeout was {} at the start, {} now",
                ms(self.timeout_ms),
                ms(given.timeout_ms)
            ));
        }
        let bytes = |v: Option<usize>| v.map_or("none".to_owned(), |b| format!("{b} bytes"));
        if self.max_memory != given.max_memory {
            out.push(format!(
                "--max-memory was {} at the start, {} now",
                bytes(self.max_memory),
                bytes(given.max_memory)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(dirs: &[&str], env: &[(&str, &str)]) -> Grants {
        Grants {
            dirs: dirs
                .iter()
                .map(|d| RecordedDir {
                    host: PathBuf::from(d),
                    guest: d.to_string(),
                    read_only: false,
                })
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: Vec::new(),
            timeout_ms: None,
            max_memory: None,
        }
    }

    #[test]
    fn a_resume_without_grants_uses_the_recorded_ones() {
        let recorded = grants(&["/data"], &[("REGION", "eu")]);
        let chosen = Grants::for_resume("wf", Some(&recorded), Grants::default()).unwrap();
        assert_eq!(chosen, recorded);
        let same = Grants::for_resume("wf", Some(&recorded), recorded.clone()).unwrap();
        assert_eq!(same, recorded);
    }

    #[test]
    fn other_grants_are_refused_with_the_difference() {
        let recorded = grants(&["/data"], &[("REGION", "eu")]);
        let error = Grants::for_resume(
            "wf",
            Some(&recorded),
            grants(&["/tmp"], &[("REGION", "us")]),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("--dir /data::/data was granted at the start, not now"),
            "{text}"
        );
        assert!(text.contains("--dir /tmp::/tmp is granted now"), "{text}");
        assert!(text.contains("--env REGION has another value"), "{text}");
        let mut wider = recorded.clone();
        wider.http = vec!["api.example.com".parse().unwrap()];
        let error = Grants::for_resume("wf", Some(&recorded), wider).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("--allow-http api.example.com is granted now, not at the start"),
            "{error}"
        );
        assert!(
            !text.contains("eu") && !text.contains("us\""),
            "values stay out of messages: {text}"
        );
    }

    #[test]
    fn the_order_and_spelling_of_grants_do_not_matter() {
        let recorded = Grants::new(
            &Sandbox {
                dirs: vec![dir("/d1", "/a"), dir("/d2/", "/b")],
                env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
                http: vec![
                    "b.example".parse().unwrap(),
                    "a.example:80".parse().unwrap(),
                ],
            },
            None,
            None,
        );
        let given = Grants::new(
            &Sandbox {
                dirs: vec![dir("/d2", "/b"), dir("/./d1", "/a")],
                env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                http: vec![
                    "a.example:80".parse().unwrap(),
                    "B.example".parse().unwrap(),
                ],
            },
            None,
            None,
        );
        assert_eq!(
            Grants::for_resume("wf", Some(&recorded), given).unwrap(),
            recorded
        );
    }

    fn dir(host: &str, guest: &str) -> DirGrant {
        DirGrant {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            read_only: false,
        }
    }

    #[test]
    fn grants_round_trip_through_json() {
        let mut recorded = grants(&["/data"], &[("A", "1")]);
        assert!(
            !recorded.to_json().contains("http"),
            "{}",
            recorded.to_json()
        );
        assert_eq!(
            Grants::from_json(&recorded.to_json()),
            Some(recorded.clone())
        );
        recorded.http = vec!["127.0.0.1:8080".parse().unwrap()];
        assert!(recorded.to_json().contains(r#""http":["127.0.0.1:8080"]"#));
        assert_eq!(Grants::from_json(&recorded.to_json()), Some(recorded));
        assert_eq!(Grants::from_json("not json"), None);
    }
}
