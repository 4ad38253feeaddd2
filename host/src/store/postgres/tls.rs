//! How a connection is secured: libpq's `sslmode` and `sslrootcert`, read
//! from the URL and turned into a rustls client configuration.
//!
//! The client's own URL parser knows `sslmode=disable|prefer|require` only,
//! and no `sslrootcert`; a URL that works with `psql` should work here too,
//! so this module takes those parameters out of the URL before the client
//! reads it, and decides what the server's certificate must prove, as libpq
//! does:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | absent, `disable` | no | - |
//! | `prefer` | if the server offers it | not checked |
//! | `require` | yes | checked against `sslrootcert` if there is one, else not |
//! | `verify-ca` | yes | signed by a root of `sslrootcert` |
//! | `verify-full` | yes | that, and issued to the host in the URL |
//!
//! One difference, on purpose: without `sslmode`, libpq tries TLS first
//! (`prefer`) and this host does not, as it did before it knew TLS.
//! `sslrootcert` is a PEM file of roots, `system` for the system's roots, or
//! absent for `~/.postgresql/root.crt` if that exists. Client certificates
//! (`sslcert`, `sslkey`) are not supported. This module knows nothing of
//! workflows or statements.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::SslMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS a URL asks for: what the client is told, and the connector that
/// checks the server (`None`: no TLS).
pub(super) struct Security {
    /// The URL without the parameters the client does not know.
    pub(super) url: String,
    /// The mode the client runs the handshake in.
    pub(super) mode: SslMode,
    pub(super) connector: Option<MakeRustlsConnect>,
}

/// What the server's certificate must prove.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

/// Read `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or
/// `key=value` pairs). An error is a sentence for the person who wrote the
/// URL.
pub(super) fn security(url: &str) -> Result<Security, String> {
    let (rest, params) = take_params(url, &["sslmode", "sslrootcert", "sslcert", "sslkey"])?;
    let value = |key: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if value("sslcert").is_some() || value("sslkey").is_some() {
        return Err(
            "client certificates (sslcert, sslkey) are not supported yet: \
                    authenticate with a password or trust instead"
                .to_owned(),
        );
    }
    let (mode, check) = match value("sslmode") {
        None | Some("disable") => (SslMode::Disable, None),
        Some("prefer") => (SslMode::Prefer, Some(Check::Nothing)),
        Some("require") => (SslMode::Require, Some(Check::Nothing)),
        Some("verify-ca") => (SslMode::Require, Some(Check::Chain)),
        Some("verify-full") => (SslMode::Require, Some(Check::ChainAndHost)),
        Some(other) => {
            return Err(format!(
                "sslmode={other} is not a mode this host knows: use disable, prefer, require, \
                 verify-ca or verify-full"
            ));
        }
    };
    let Some(check) = check else {
        return Ok(Security {
            url: rest,
            mode,
            connector: None,
        });
    };
    let roots = match value("sslrootcert") {
        Some("system") => Some(system_roots()?),
        Some(path) => Some(roots_from(Path::new(path))?),
        None => match default_root_file() {
            Some(path) if path.is_file() => Some(roots_from(&path)?),
            _ => None,
        },
    };
    let check = match (check, roots.is_some()) {
        // libpq: `require` with a root file checks the chain.
        (Check::Nothing, true) if mode == SslMode::Require => Check::Chain,
        (Check::Chain | Check::ChainAndHost, false) => {
            return Err(format!(
                "sslmode=verify-{} needs the roots to check the server's certificate against: \
                 add sslrootcert=PATH (a PEM file), or sslrootcert=system for the system's \
                 roots",
                if check == Check::Chain { "ca" } else { "full" }
            ));
        }
        (check, _) => check,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // After the match above, roots are there exactly when something is
    // to be checked against them.
    let chain = match (check, roots) {
        (Check::Nothing, _) | (_, None) => None,
        (_, Some(roots)) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("cannot check server certificates: {e}"))?,
        ),
    };
    let verifier = Arc::new(CertificateCheck {
        chain,
        host: check == Check::ChainAndHost,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Security {
        url: rest,
        mode,
        connector: Some(MakeRustlsConnect::new(config)),
    })
}

/// libpq's default root file.
fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"))
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the root certificates in sslrootcert={shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert={shown} holds no certificate this host can use (a PEM file of one or \
             more `BEGIN CERTIFICATE` blocks)"
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(
            "sslrootcert=system: no root certificates were found on this system (install the \
             ca-certificates package, or give sslrootcert=PATH)"
                .to_owned(),
        );
    }
    Ok(roots)
}

/// `url` without the parameters in `keys`, and those parameters as given
/// (last wins), in either form of URL.
fn take_params(url: &str, keys: &[&str]) -> Result<(String, Vec<(String, String)>), String> {
    let mut taken = Vec::new();
    if let Some((base, query)) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .and_then(|_| url.split_once('?'))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if keys.contains(&key) {
                taken.push((key.to_owned(), percent_decoded(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, taken));
    }
    if url.contains("://") {
        return Ok((url.to_owned(), taken));
    }
    // `key=value` pairs, a value bare or in single quotes (with `\`
    // escapes): the pairs not taken are kept as written.
    let mut kept = Vec::new();
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=').ok_or_else(|| {
            format!(
                "`{}` has no `=value`",
                rest.split_whitespace().next().unwrap_or(rest)
            )
        })?;
        let key = key.trim();
        let after_key = after_key.trim_start();
        let (value, written_len) = pair_value(after_key)?;
        let written = &rest[..rest.len() - after_key.len() + written_len];
        if keys.contains(&key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push(written.trim().to_owned());
        }
        rest = after_key[written_len..].trim_start();
    }
    Ok((kept.join(" "), taken))
}

/// The value at the start of `text` in a `key=value` list, and how many
/// bytes of `text` it took.
fn pair_value(text: &str) -> Result<(String, usize), String> {
    let Some(quoted) = text.strip_prefix('\'') else {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        return Ok((text[..end].to_owned(), end));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => return Ok((value, i + 2)),
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            c => value.push(c),
        }
    }
    Err("a quoted value has no closing `'`".to_owned())
}

fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("`{text}` has a `%` not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// What the server's certificate must prove: nothing (`prefer`, or
/// `require` without roots, as libpq: the connection is encrypted, the
/// server not authenticated), a chain to one of the roots (`verify-ca`,
/// whatever host it names), or that and the URL's host (`verify-full`).
/// The handshake's signatures are checked in every case.
#[derive(Debug)]
struct CertificateCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    host: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(url: &str) -> (String, Vec<(String, String)>) {
        take_params(url, &["sslmode", "sslrootcert"]).unwrap()
    }

    #[test]
    fn tls_parameters_come_out_of_a_url_and_the_rest_stays() {
        assert_eq!(
            taken(
                "postgres://u@h/db?sslmode=verify-full&options=-csearch_path%3Dx&sslrootcert=%2Ftmp%2Fca.pem"
            ),
            (
                "postgres://u@h/db?options=-csearch_path%3Dx".to_owned(),
                vec![
                    ("sslmode".to_owned(), "verify-full".to_owned()),
                    ("sslrootcert".to_owned(), "/tmp/ca.pem".to_owned())
                ]
            )
        );
        assert_eq!(
            taken("postgres://u@h/db?sslmode=require").0,
            "postgres://u@h/db"
        );
        assert_eq!(taken("postgres://u@h/db").1, vec![]);
    }

    #[test]
    fn tls_parameters_come_out_of_key_value_pairs_and_the_rest_stays_as_written() {
        assert_eq!(
            taken("host=h sslmode = 'verify-ca' password='a b\\'c' sslrootcert=/ca.pem dbname=x"),
            (
                "host=h password='a b\\'c' dbname=x".to_owned(),
                vec![
                    ("sslmode".to_owned(), "verify-ca".to_owned()),
                    ("sslrootcert".to_owned(), "/ca.pem".to_owned())
                ]
            )
        );
        assert!(take_params("host=h password='open", &["sslmode"]).is_err());
    }

    #[test]
    fn unknown_modes_and_verification_without_roots_are_refused_with_what_to_do() {
        let refused = |url: &str| security(url).err().unwrap();
        assert!(refused("postgres://h/db?sslmode=allow").contains("verify-full"));
        assert!(
            refused("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .contains("/nonexistent.pem")
        );
        assert!(refused("postgres://h/db?sslcert=/c.pem").contains("not supported"));
        assert!(
            security("postgres://h/db?sslmode=require")
                .unwrap()
                .connector
                .is_some()
        );
        assert!(security("postgres://h/db").unwrap().connector.is_none());
    }
}
