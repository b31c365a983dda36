//! A throwaway PostgreSQL cluster for one test: Debian's `postgresql` binaries, `initdb` in a
//! temporary directory (as the `postgres` user when the tests run as root, since PostgreSQL
//! refuses to run as root), a free loopback port, trust authentication on loopback only,
//! stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

use sqlx::Connection;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Server options beyond the port and addresses (TLS).
    extra: String,
}

/// The newest installed server's binaries (`/usr/lib/postgresql/<version>/bin`).
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server version").1
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl PgCluster {
    pub async fn start() -> Self {
        let cluster = Self::init().await;
        cluster.resume();
        cluster
    }

    /// A cluster that takes TCP connections over TLS only (`hostssl`), with a certificate
    /// for 127.0.0.1 and localhost from a throwaway CA; returns it and the CA's PEM file.
    pub async fn start_tls() -> (Self, PathBuf) {
        let mut cluster = Self::init().await;
        let cert = crate::helpers::loopback_cert();
        let data = cluster.data();
        let write = |name: &str, text: String, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            cluster.own(&path);
        };
        write("server.crt", cert.leaf, 0o644);
        write("server.key", cert.key, 0o600);
        write(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n".into(),
            0o600,
        );
        let ca_file = cluster.dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.ca).unwrap();
        cluster.extra = "-c ssl=on".into();
        cluster.resume();
        (cluster, ca_file)
    }

    /// Gives `path` to the `postgres` user when we are root.
    fn own(&self, path: &std::path::Path) {
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            std::os::unix::fs::chown(path, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
        }
    }

    async fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("no postgres user (apt-get install postgresql)");
            std::os::unix::fs::chown(dir.path(), Some(pg.uid.as_raw()), Some(pg.gid.as_raw()))
                .unwrap();
        }
        let port = crate::helpers::dead_port().await;
        let cluster = Self {
            dir,
            bin: server_bin(),
            port,
            extra: String::new(),
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of the server's programs, to run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        }
    }

    /// Runs one of the server's programs; fails the test if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec!["-D", data.to_str().unwrap(), "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Starts the server (again, after [`PgCluster::pause`]) on the same port.
    pub fn resume(&self) {
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=200 {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-o", &options, "start"]);
    }

    /// Stops the server at once (clients see their connections drop).
    pub fn pause(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    /// The connection string of `database`.
    pub fn dsn(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database; its connection string.
    pub async fn database(&self, name: &str) -> String {
        let mut c = sqlx::PgConnection::connect(&self.dsn("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        self.dsn(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .args([
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
    }
}
