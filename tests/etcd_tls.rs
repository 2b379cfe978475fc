//! The etcd store against a real etcd whose client port takes only TLS with a client certificate
//! (`--client-cert-auth`) and that has etcd users (`auth enable`): vane connects with `[store] etcd`'s
//! CA, client certificate and user (password from a file), works, and is refused without any one of
//! them, never showing the password in an error.

mod support {
    pub mod etcd;
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
use support::etcd::{EtcdCluster, ServerTls};
use vane::config::EtcdConfig;
use vane::rollout::ports::{Created, Store};
use vane::rollout::{Phase, machine};
use vane::store::EtcdStore;

const PASSWORD: &str = "vane-etcd-password-0123";

/// A CA, etcd's certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let write = |file: &str, pem: String| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    let leaf = |cn: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();
        (write(&format!("{cn}.crt"), cert.pem()), write(&format!("{cn}.key"), key.serialize_pem()))
    };
    let server = leaf("etcd", vec!["127.0.0.1".into(), "localhost".into()]);
    // Not an etcd user: the certificate alone grants nothing once auth is on.
    let client = leaf("vane-client", vec![]);
    Pki { ca: write("ca.crt", ca_cert.pem()), server, client }
}

/// As etcd's admin (over TLS, before auth is on): a root user, a `vane` user that may read and write
/// `/tls/` only, then `auth enable`.
async fn enable_auth(etcd: &EtcdCluster, p: &Pki) {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&p.ca).unwrap()))
        .identity(Identity::from_pem(std::fs::read(&p.client.0).unwrap(), std::fs::read(&p.client.1).unwrap()));
    let opts = ConnectOptions::new().with_tls(tls).with_timeout(Duration::from_secs(5));
    let mut c = etcd_client::Client::connect(etcd.endpoints(), Some(opts)).await.expect("admin connects over TLS");
    c.user_add("root", "root-password-0123", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("vane", PASSWORD, None).await.unwrap();
    c.role_add("vane").await.unwrap();
    c.role_grant_permission("vane", Permission::read_write("/tls/").with_prefix()).await.unwrap();
    c.user_grant_role("vane", "vane").await.unwrap();
    c.auth_enable().await.unwrap();
}

async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, String> {
    EtcdStore::connect(cfg, "tls-replica".into(), "http://a.invalid".into()).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_a_client_certificate_and_an_etcd_user_and_not_without() {
    vane::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path(), "good");
    let etcd =
        EtcdCluster::start_tls(ServerTls { cert: p.server.0.clone(), key: p.server.1.clone(), ca: p.ca.clone() });
    enable_auth(&etcd, &p).await;
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cfg = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: "/tls/".into(),
        lease_ttl: Duration::from_secs(2),
        ca_file: s(&p.ca),
        cert_file: s(&p.client.0),
        key_file: s(&p.client.1),
        username: "vane".into(),
        password_file: s(&password_file),
        password_env: String::new(),
    };
    assert!(cfg.endpoints[0].starts_with("https://"));

    let store = connect(&cfg).await.expect("connects with CA, client certificate and user");
    let policy = vane::fixtures::policy("p", &[50, 100], Duration::from_secs(1), 2);
    let (mut r, out) = machine::create("r1".into(), &vane::fixtures::request("cart", "p"), policy, "ci", 1_000);
    assert!(matches!(Store::create(&store, &mut r, out.events, Some(("k", "b"))).await, Ok(Created::New(_))));
    r.phase = Phase::Succeeded;
    Store::commit(&store, &mut r, vec![]).await.expect("a fenced commit over TLS");
    assert_eq!(Store::get(&store, "r1").unwrap().map(|r| r.phase), Some(Phase::Succeeded));
    assert_eq!(Store::sweep(&store, u64::MAX).await.unwrap(), 1, "retention over TLS");
    store.leave().await.unwrap();

    // Refused without any one piece; the password never appears in the error.
    let other = pki(dir.path(), "other");
    let wrong_password = dir.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password").unwrap();
    let cases = [
        (
            "no client certificate",
            "transport",
            EtcdConfig { cert_file: String::new(), key_file: String::new(), ..cfg.clone() },
        ),
        (
            "a client certificate etcd does not trust",
            "transport",
            EtcdConfig { cert_file: s(&other.client.0), key_file: s(&other.client.1), ..cfg.clone() },
        ),
        (
            "a CA that did not sign etcd's certificate",
            "UnknownIssuer",
            EtcdConfig { ca_file: s(&other.ca), ..cfg.clone() },
        ),
        ("a wrong password", "authentication failed", EtcdConfig { password_file: s(&wrong_password), ..cfg.clone() }),
        (
            "a prefix the user may not write",
            "permission denied",
            EtcdConfig { prefix: "/elsewhere/".into(), ..cfg.clone() },
        ),
    ];
    for (what, why, bad) in cases {
        match connect(&bad).await {
            Ok(_) => panic!("connected with {what}"),
            Err(e) => {
                eprintln!("{what}: refused: {e}");
                assert!(e.contains(why), "{what}: {e}");
                assert!(!e.contains(PASSWORD) && !e.contains("not-the-password"), "{what}: {e}");
            }
        }
    }
    // A configuration that cannot work is refused before connecting, naming the field.
    let no_password = EtcdConfig { password_file: String::new(), ..cfg.clone() };
    let refused = |r: Result<EtcdStore, String>| r.err().expect("refused");
    assert!(refused(connect(&no_password).await).contains("password_file or password_env"));
    let missing = EtcdConfig { password_file: s(&dir.path().join("missing")), ..cfg.clone() };
    assert!(refused(connect(&missing).await).contains("store.etcd.password_file"));
}
