//! The egress's terminating TLS stack: BoringSSL (through the `boring` crate, built from source
//! by `boring-sys` and linked statically), chosen because it completes a handshake whatever host
//! name the client puts in SNI, and because it measured best. A stock Kuma sidecar sends the tag
//! form `name{mesh=m}` for a legacy ExternalService (Kuma v2.14
//! `pkg/xds/generator/egress/testdata/01.externalservice-only.golden.yaml`), which rustls 0.23
//! refuses (`ServerNameMustContainOneHostName`); BoringSSL, like OpenSSL, refuses only an empty
//! name, one over 255 bytes or one containing NUL (RFC 6066 §3 leaves the name's syntax to the
//! application). It is also what Envoy, and so Kuma's own egress, terminates with. The
//! measurements behind the choice (rustls, OpenSSL 3.0 and BoringSSL side by side) are in
//! BENCHMARKS.md ("Terminating TLS stack").
//!
//! [`acceptor_for_mesh`] builds the server side for one mesh and one egress certificate. The
//! client rules are those of the rustls stack it replaced, and of Kuma's egress
//! (`requireClientCertificate: true`, `matchTypedSubjectAltNames: prefix spiffe://<mesh>/`):
//! * a client certificate is required (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`);
//! * it must chain to the CA certificate of a backend the mesh lists (every listed backend, for
//!   Kuma's CA rotation); a listed CA need not be self-signed (`X509_V_FLAG_PARTIAL_CHAIN`: a
//!   trust anchor ends the chain, as in WebPKI);
//! * it must be within its validity period and fit a TLS client (the `ssl_client`
//!   purpose: an extended key usage, when present, includes `clientAuth`);
//! * it must carry a `spiffe://<mesh>/…` URI SAN and no SPIFFE id of another trust domain
//!   ([`super::verify::check_mesh_identity`], shared with the rest of the node).
//!
//! Versions and ciphers are Mozilla's "intermediate" profile (TLS 1.2 and 1.3). There is no
//! session cache and no ticket: every connection presents and checks certificates, so a CA
//! rotation or a revoked mesh membership takes effect on the next connection.
//!
//! ALPN: the protocols a connection may negotiate are set per connection ([`set_alpn`]), since one
//! certificate serves services of different protocols. A client that offers none of them (a Kuma
//! sidecar offers only `kuma`) gets no ALPN, as from Kuma's egress, whose `DownstreamTlsContext`
//! lists none.

use std::sync::OnceLock;

use boring::ex_data::Index;
use boring::pkey::PKey;
use boring::ssl::{
    AlpnError, Ssl, SslAcceptor, SslContext, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, select_next_proto,
};
use boring::x509::X509;
use boring::x509::verify::X509VerifyFlags;
use rustls::pki_types::CertificateDer;

use super::PkiError;
use super::issue::IssuedCert;
use super::mesh_ca::MeshCa;
use super::verify::check_mesh_identity;

/// ALPN wire format (RFC 7301 §3.1) for an HTTP service: HTTP/2 preferred, then HTTP/1.1.
pub const ALPN_HTTP: &[u8] = b"\x02h2\x08http/1.1";

/// The per-connection ALPN offer, as ex-data of the `Ssl`.
fn alpn_index() -> Index<Ssl, &'static [u8]> {
    static INDEX: OnceLock<Index<Ssl, &'static [u8]>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("BoringSSL has room for one ex-data index"))
}

/// The client's identity from its certificate (verified by the handshake): the first
/// `spiffe://<mesh>/<service>` URI SAN
/// ([`proto::zone::ClientIdentity::from_spiffe_id`]); `None` without one.
pub fn client_identity(ssl: &SslRef) -> Option<proto::zone::ClientIdentity> {
    let cert = ssl.peer_certificate()?;
    let names = cert.subject_alt_names()?;
    names
        .iter()
        .filter_map(|n| n.uri())
        .find_map(proto::zone::ClientIdentity::from_spiffe_id)
}

/// Lets `ssl` negotiate the protocols of `offer` (ALPN wire format, server preference first).
/// Without a call, the connection negotiates no ALPN.
pub fn set_alpn(ssl: &mut SslRef, offer: &'static [u8]) {
    ssl.set_ex_data(alpn_index(), offer);
}

/// The egress's server side for one mesh (see the module documentation): presents `cert`
/// (leaf, then any chain) and trusts client certificates of `ca` and of every certificate in
/// `trusted`. Errors: BoringSSL refuses the certificate or key ([`PkiError::BoringSsl`]).
pub fn acceptor_for_mesh(
    ca: &MeshCa,
    trusted: &[CertificateDer<'static>],
    cert: &IssuedCert,
) -> Result<SslContext, PkiError> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    let mut chain = cert.chain.iter();
    let leaf = chain.next().ok_or(PkiError::NoCertificate)?;
    let leaf = X509::from_der(leaf)?;
    builder.set_certificate(&leaf)?;
    for extra in chain {
        builder.add_extra_chain_cert(X509::from_der(extra)?)?;
    }
    let key = PKey::private_key_from_der(cert.key.secret_der())?;
    builder.set_private_key(&key)?;
    builder.check_private_key()?;

    let mut anchors = vec![ca.certificate().clone()];
    anchors.extend(trusted.iter().filter(|c| *c != ca.certificate()).cloned());
    for anchor in &anchors {
        let x509 = X509::from_der(anchor)?;
        builder.cert_store_mut().add_cert(x509.clone())?;
        builder.add_client_ca(&x509)?;
    }
    builder
        .cert_store_mut()
        .set_flags(X509VerifyFlags::PARTIAL_CHAIN);
    let mesh = ca.mesh().to_string();
    builder.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        move |chain_ok, store| {
            if !chain_ok {
                return false;
            }
            if store.error_depth() != 0 {
                return true;
            }
            let Some(leaf) = store.current_cert() else {
                return false;
            };
            let Ok(der) = leaf.to_der() else {
                return false;
            };
            let ok = check_mesh_identity(&CertificateDer::from(der), &mesh).is_ok();
            if !ok {
                store.set_error(Err(boring::x509::X509VerifyError::APPLICATION_VERIFICATION));
            }
            ok
        },
    );
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_alpn_select_callback(|ssl, client| {
        let Some(offer) = ssl.ex_data(alpn_index()).copied() else {
            return Err(AlpnError::NOACK);
        };
        select_next_proto(offer, client).ok_or(AlpnError::NOACK)
    });
    Ok(builder.build().into_context())
}

/// Runs the server side of a handshake on `stream` with `context`, offering `alpn` (ALPN wire
/// format; `None`: no ALPN). Errors: the handshake failed; the message names BoringSSL's reason
/// and, for a refused client certificate, the verification result (e.g. `certificate has
/// expired`, `application verification failure` for a SPIFFE id of another mesh).
pub async fn accept<S>(
    context: &SslContext,
    alpn: Option<&'static [u8]>,
    stream: S,
) -> std::io::Result<tokio_boring::SslStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ssl = Ssl::new(context).map_err(std::io::Error::other)?;
    if let Some(offer) = alpn {
        set_alpn(&mut ssl, offer);
    }
    match tokio_boring::SslStreamBuilder::new(ssl, stream)
        .accept()
        .await
    {
        Ok(tls) => Ok(tls),
        Err(error) => {
            let verify = error.ssl().map(|s| s.verify_result());
            let detail = match verify {
                Some(Err(v)) => format!("{error}: {}", v.error_string()),
                _ => error.to_string(),
            };
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, detail))
        }
    }
}
