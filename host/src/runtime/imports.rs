//! What a component imports, read from its bytes without compiling it, so
//! that a component needing what this host does not provide is refused at
//! once (compiling a large JavaScript or Python guest takes seconds) with a
//! hint that fits the package it asked for.
//!
//! Only the package is checked here: an interface or version of a provided
//! package that the linker lacks is still found by the check after
//! compiling (`Runtime::compile`), which names it.

use wasmparser::{Parser, Payload};

/// The packages whose interfaces the linker provides: WASI 0.2 as
/// `wasmtime_wasi::p2::add_to_linker_sync` adds it, `wasi:http` (see
/// `runtime::http`), and the contract.
const PROVIDED_PACKAGES: &[&str] = &[
    "durable:workflow",
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:http",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// An import of a package this host does not provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "imports {interface}, which this host does not provide ({})",
    self.what()
)]
pub struct UnsupportedImport {
    /// The first such import, e.g. `wasi:http/outgoing-handler@0.2.3`.
    pub interface: String,
}

impl UnsupportedImport {
    /// The import's package: `wasi:http`.
    pub fn package(&self) -> &str {
        package(&self.interface)
    }

    /// What to do about it, for the command line and the API alike.
    pub fn hint(&self) -> String {
        format!(
            "rebuild it without the code that imports {}",
            self.package()
        )
    }

    /// What a workflow may import instead, said in the error.
    fn what(&self) -> &'static str {
        "a workflow may import durable:workflow and WASI 0.2's wasi:cli, wasi:clocks, \
         wasi:filesystem, wasi:http, wasi:io, wasi:random and wasi:sockets"
    }
}

/// The first import of `bytes` (a component) from a package this host does
/// not provide. Bytes that do not parse pass: compiling reports them.
pub fn unsupported_import(bytes: &[u8]) -> Option<UnsupportedImport> {
    let interface = top_level_imports(bytes)
        .into_iter()
        .find(|name| is_interface(name) && !PROVIDED_PACKAGES.contains(&package(name)))?;
    Some(UnsupportedImport { interface })
}

/// The names the component itself imports (not its nested components and
/// modules), as far as the bytes parse.
fn top_level_imports(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth > 0 => depth -= 1,
            Payload::ComponentImportSection(imports) if depth == 0 => {
                names.extend(
                    imports
                        .into_iter()
                        .map_while(Result::ok)
                        .map(|import| import.name.name.to_owned()),
                );
            }
            _ => {}
        }
    }
    names
}

/// `ns:pkg/interface[@version]`, as opposed to a plain name.
fn is_interface(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(package, _)| package.contains(':'))
}

/// `wasi:http` of `wasi:http/outgoing-handler@0.2.3`.
fn package(interface: &str) -> &str {
    interface.split('/').next().unwrap_or(interface)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(imports: &[&str]) -> Vec<u8> {
        let imports: String = imports
            .iter()
            .map(|name| format!("(import \"{name}\" (instance))"))
            .collect();
        // A nested component's imports are its own business.
        let nested = "(component (import \"wasi:keyvalue/store@0.2.0\" (instance)))";
        wat::parse_str(format!("(component {imports} {nested})")).unwrap()
    }

    #[test]
    fn provided_packages_pass() {
        let bytes = component(&[
            "wasi:cli/stdout@0.2.3",
            "wasi:io/poll@0.2.3",
            "wasi:http/outgoing-handler@0.2.3",
            "durable:workflow/durable-step@0.2.0",
        ]);
        assert_eq!(unsupported_import(&bytes), None);
    }

    #[test]
    fn the_first_unsupported_import_is_named_with_what_it_is_for() {
        let bytes = component(&[
            "wasi:io/poll@0.2.3",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:blobstore/blobstore@0.2.0-draft",
        ]);
        let found = unsupported_import(&bytes).unwrap();
        assert_eq!(found.interface, "wasi:keyvalue/store@0.2.0-draft");
        assert_eq!(found.package(), "wasi:keyvalue");
        assert_eq!(
            found.to_string(),
            "imports wasi:keyvalue/store@0.2.0-draft, which this host does not provide \
             (a workflow may import durable:workflow and WASI 0.2's wasi:cli, wasi:clocks, \
             wasi:filesystem, wasi:http, wasi:io, wasi:random and wasi:sockets)"
        );
        assert_eq!(
            found.hint(),
            "rebuild it without the code that imports wasi:keyvalue"
        );
    }

    #[test]
    fn plain_names_and_unparsable_bytes_are_left_to_the_compiler() {
        assert_eq!(unsupported_import(&component(&["run"])), None);
        assert_eq!(unsupported_import(b"\0asm\x0d\0\x01\0garbage"), None);
    }
}
