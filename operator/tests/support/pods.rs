//! Runs the pods of a rendered StatefulSet on this machine the way a kubelet would, as far as
//! the daemons can tell: the containers' commands as their users, with only their capabilities
//! (bounding set), no new privileges, a read-only root filesystem, and exactly the rendered
//! volumes at the rendered paths with their modes and the pod's fsGroup. Then the rendered
//! probes decide whether the pod is ready.
//!
//! Everything happens in private mount, network and pid namespaces (`unshare`), so the daemons
//! listen on their standard ports on a loopback of their own, and all of them end with the
//! namespace. Needs root.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Probe, Secret, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The host's uid/gid for an id of the mail images (they pin their users; this machine's
/// Debian packages chose others).
pub struct HostIds(pub BTreeMap<i64, (String, String)>);

impl HostIds {
    /// `image id -> user name` for the image users whose ids differ in the containers' root
    /// filesystem ([`rootfs`]).
    pub fn from_names(names: &[(i64, &str)]) -> Self {
        let lookup = |db: &str, name: &str| {
            let file = rootfs().join("etc").join(db);
            std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f[0] == name)
                .unwrap_or_else(|| panic!("no {db} entry {name} in {}", file.display()))[2]
                .to_string()
        };
        Self(
            names
                .iter()
                .map(|(id, name)| (*id, (lookup("passwd", name), lookup("group", name))))
                .collect(),
        )
    }
    fn uid(&self, id: i64) -> String {
        self.0.get(&id).map_or(id.to_string(), |(u, _)| u.clone())
    }
    fn gid(&self, id: i64) -> String {
        self.0.get(&id).map_or(id.to_string(), |(_, g)| g.clone())
    }
}

/// The filesystem the containers run on, read-only: the Debian root of `POSTWARDEN_ROOT` (the
/// images' release), else this machine's `/`.
pub fn rootfs() -> PathBuf {
    match std::env::var_os("POSTWARDEN_ROOT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/"),
    }
}

/// Writes the files of every volume of the pod under `work/vol/<volume>` and returns the
/// script that mounts them and starts the containers.
/// Once the pod is ready, each of `checks` (label, shell command) runs from inside the pod's
/// network; the report says `OK label` or `FAILED label`. Then every container gets SIGTERM, as
/// on a pod deletion, and the report says how long until no process was left (`STOPPED`), or
/// which were (`LINGERING`).
pub fn pod_script(
    sts: &StatefulSet,
    config_maps: &[ConfigMap],
    secrets: &[Secret],
    ids: &HostIds,
    work: &Path,
    checks: &[(&str, &str)],
) -> String {
    let name = sts.metadata.name.clone().unwrap();
    let spec = sts.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let fs_group = ids.gid(pod.security_context.as_ref().unwrap().fs_group.unwrap());
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let volumes: BTreeMap<String, &Volume> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v))
        .collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "set -eu\nW={}\nFSG={fs_group}\nROOTFS={}\nAGENT_DIR={}\nexport HOSTNAME={name}-0",
        work.display(),
        rootfs().display(),
        agent_dir().display()
    );
    s.push_str(PRELUDE);

    // Every volume once, as the kubelet prepares it; containers bind it where they mount it.
    for (vname, files, mode, kind) in volume_contents(&volumes, &claims, config_maps, secrets) {
        let dir = work.join("files").join(&vname);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in &files {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        let _ = writeln!(s, "volume {vname} {kind} {mode:o}");
    }

    for c in &pod.containers {
        let _ = writeln!(s, "root {}", c.name);
        for m in c.volume_mounts.iter().flatten() {
            let ro = if m.read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            let _ = writeln!(s, "bind {} {} {} {ro}", c.name, m.name, m.mount_path);
        }
        let _ = writeln!(s, "seal {}", c.name);
    }
    for c in &pod.containers {
        let _ = writeln!(
            s,
            "run {0} {1} >\"$W/{0}.log\" 2>&1 &\necho $! >> \"$W/pids\"",
            c.name,
            run_as(c, ids, &fs_group).join(" "),
        );
    }
    // Ready when every container's readiness probe (or, without one, liveness) passes.
    let _ = writeln!(s, "for i in $(seq 1 120); do\n  sleep 1\n  ready=1");
    for c in &pod.containers {
        let probe = c.readiness_probe.as_ref().or(c.liveness_probe.as_ref());
        let check = probe_check(
            c,
            probe.expect("every container has a probe"),
            ids,
            &fs_group,
        );
        let _ = writeln!(s, "  {check} >/dev/null 2>&1 || ready=0");
    }
    let _ = writeln!(s, "  [ $ready = 1 ] && break\ndone");
    for c in &pod.containers {
        let probe = c
            .readiness_probe
            .as_ref()
            .or(c.liveness_probe.as_ref())
            .unwrap();
        let check = probe_check(c, probe, ids, &fs_group);
        let _ = writeln!(
            s,
            "if {check} >/dev/null 2>&1; then echo \"READY {0}\"; else echo \"NOT READY {0}\"; tail -n 40 \"$W/{0}.log\"; fi",
            c.name
        );
    }
    s.push_str("echo LISTENING $(ss -ltnH | awk '{print $4}' | sed 's/.*://' | sort -n | uniq | tr '\\n' ' ')\n");
    for (label, cmd) in checks {
        let _ = writeln!(
            s,
            "if ( {cmd} ) >/dev/null 2>&1; then echo 'OK {label}'; else echo 'FAILED {label}'; fi"
        );
    }
    s.push_str(STOP);
    s
}

/// SIGTERM to every container's first process; wait until no process but this script (pid 1)
/// is left, looking at /proc from this shell itself so no helper process counts. Zombies
/// (exited, not yet reaped by this script) do not count.
const STOP: &str = r#"
kill -TERM $(cat "$W/pids")
i=0
while [ $i -lt 30 ]; do
  left=""
  for d in /proc/[0-9]*; do
    [ "$d" = /proc/1 ] && continue
    read -r _ comm state _ < "$d/stat" 2>/dev/null || continue
    [ "$state" = Z ] || left="$left $comm"
  done
  [ -z "$left" ] && { echo "STOPPED after ${i}s"; exit 0; }
  i=$((i + 1))
  sleep 1
done
echo "LINGERING$left"
"#;

/// The shell words that run a command in `container` of the pod (like `kubectl exec`), for
/// use in checks.
pub fn exec_in(sts: &StatefulSet, container: &str, ids: &HostIds) -> String {
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = pod.containers.iter().find(|c| c.name == container).unwrap();
    let mut who = run_as(c, ids, "");
    who.truncate(4);
    format!("run {container} {}", who.join(" "))
}

/// The directory of the postwarden binary cargo built for these tests.
fn agent_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_postwarden"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `script` in fresh mount, network and pid namespaces.
pub fn run(script: &str, work: &Path) -> Output {
    let path = work.join("pod.sh");
    std::fs::write(&path, script).unwrap();
    Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
        ])
        .arg(&path)
        .output()
        .expect("unshare runs")
}

/// Shell functions of the generated script.
///
/// - `volume NAME KIND MODE`: a tmpfs with the staged files: KIND `config`/`secret` (files of
///   MODE, read-only, directory group fsGroup), `empty` (0777, group fsGroup, setgid, like an
///   emptyDir), `claim` (a fresh volume: root-owned, group fsGroup, 2775).
/// - `root C`: container C's root: [`rootfs`], read-only, with /dev, /proc and /sys, and this
///   build's `postwarden` in /usr/local/bin as in the mail-imap image.
/// - `bind C VOLUME PATH ro|rw`: mounts the volume at PATH in C's root. A missing PATH is
///   created through an overlay on its nearest existing ancestor, sealed read-only afterwards.
/// - `seal C`: makes C's overlays read-only.
/// - `run C UID GID CAPS NNP CMD...`: C's command, chrooted, as UID:GID with fsGroup as
///   supplementary group, only CAPS (`-all,+cap,...`) in the bounding set, and NNP
///   (`--no-new-privs` or `-`).
/// - `http_get PORT PATH`: an HTTP/1.0 GET on the pod's loopback.
const PRELUDE: &str = r#"
mkdir -p "$W/vol" "$W/ovl"
ip link set lo up
volume() {
  v="$W/vol/$1"; mkdir -p "$v"; mount -t tmpfs tmpfs "$v"
  case "$2" in
    config|secret)
      cp -a "$W/files/$1/." "$v/"
      find "$v" -type f -exec chmod "$3" {} + -exec chgrp "$FSG" {} +
      chgrp "$FSG" "$v"; chmod 2755 "$v"; mount -o remount,ro "$v" ;;
    empty) chgrp "$FSG" "$v"; chmod 2777 "$v" ;;
    claim) chgrp "$FSG" "$v"; chmod 2775 "$v" ;;
  esac
}
root() {
  r="$W/root-$1"; mkdir -p "$r"
  mount --bind "$ROOTFS" "$r"
  mount -o remount,bind,ro "$r"
  for d in dev proc sys; do mount --rbind "/$d" "$r/$d"; done
  # The postwarden binary where the mail-imap image has it (the replication agent).
  mount --bind "$AGENT_DIR" "$r/usr/local/bin"
}
bind() {
  r="$W/root-$1"; target="$r$3"
  if [ ! -e "$target" ]; then
    a="$(dirname "$3")"; while [ ! -e "$r$a" ]; do a="$(dirname "$a")"; done
    [ "$a" != / ] || { echo "cannot create $3 below /"; exit 1; }
    o="$W/ovl/$1$(echo "$a" | tr / _)"
    # Below an overlay made for an earlier mount the ancestor is writable already.
    if ! mkdir "$target" 2>/dev/null && [ ! -d "$o" ]; then
      mkdir -p "$o/u" "$o/w"
      mount -t overlay overlay -o "lowerdir=$ROOTFS$a,upperdir=$o/u,workdir=$o/w" "$r$a"
      echo "$r$a" >> "$W/ovl/$1.list"
    fi
    mkdir -p "$target"
  fi
  mount --bind "$W/vol/$2" "$target"
  [ "$4" = rw ] || mount -o remount,bind,ro "$target"
}
seal() {
  [ -f "$W/ovl/$1.list" ] || return 0
  while read -r m; do mount -o remount,ro "$m"; done < "$W/ovl/$1.list"
}
http_get() { # PORT PATH: the HTTP response, headers first
  timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"; printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$1" >&3; cat <&3' "$1" "$2"
}
run() {
  c="$1"; u="$2"; g="$3"; caps="$4"; nnp="$5"; shift 5
  [ "$nnp" != - ] || nnp=
  exec chroot "$W/root-$c" setpriv --reuid="$u" --regid="$g" --groups="$FSG" \
    --inh-caps=-all --bounding-set="$caps" $nnp -- "$@"
}
"#;

/// A volume's name, files, file mode and kind (`config`, `secret`, `empty`, `claim`).
type StagedVolume = (String, BTreeMap<String, Vec<u8>>, i32, &'static str);

fn volume_contents(
    volumes: &BTreeMap<String, &Volume>,
    claims: &[String],
    config_maps: &[ConfigMap],
    secrets: &[Secret],
) -> Vec<StagedVolume> {
    let cm = |name: &str| {
        config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("ConfigMap {name} is rendered"))
    };
    let secret = |name: &str| -> BTreeMap<String, Vec<u8>> {
        secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Secret {name} is rendered"))
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    };
    let mut out = Vec::new();
    for (name, v) in volumes {
        if let Some(c) = &v.config_map {
            let files = cm(&c.name)
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.push((name.clone(), files, c.default_mode.unwrap(), "config"));
        } else if let Some(s) = &v.secret {
            let mut files = secret(s.secret_name.as_deref().unwrap());
            if let Some(items) = &s.items {
                files = items
                    .iter()
                    .map(|i| (i.path.clone(), files[&i.key].clone()))
                    .collect();
            }
            out.push((name.clone(), files, s.default_mode.unwrap(), "secret"));
        } else if let Some(p) = &v.projected {
            // Each source's files (all keys, or its items), as the kubelet projects them.
            let mut files = BTreeMap::new();
            let mut kind = "config";
            for source in p.sources.iter().flatten() {
                let (data, items) = match (&source.secret, &source.config_map) {
                    (Some(s), None) => {
                        kind = "secret";
                        (secret(&s.name), &s.items)
                    }
                    (None, Some(c)) => {
                        let data = cm(&c.name).data.clone().unwrap_or_default();
                        let bytes = data.into_iter().map(|(k, v)| (k, v.into_bytes()));
                        (bytes.collect(), &c.items)
                    }
                    _ => panic!("volume {name}: only Secrets and ConfigMaps are projected"),
                };
                match items {
                    Some(items) => {
                        for i in items {
                            files.insert(i.path.clone(), data[&i.key].clone());
                        }
                    }
                    None => files.extend(data),
                }
            }
            out.push((name.clone(), files, p.default_mode.unwrap(), kind));
        } else if v.empty_dir.is_some() {
            out.push((name.clone(), BTreeMap::new(), 0o777, "empty"));
        } else {
            panic!("volume {name} of an unexpected kind");
        }
    }
    for claim in claims {
        out.push((claim.clone(), BTreeMap::new(), 0o2775, "claim"));
    }
    out
}

/// `UID GID BOUNDING-SET NNP CMD...` for `run`.
fn run_as(c: &Container, ids: &HostIds, _fs_group: &str) -> Vec<String> {
    let sc = c.security_context.as_ref().unwrap();
    let user = sc.run_as_user.unwrap();
    let group = sc.run_as_group.unwrap_or(user);
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut bounding = String::from("-all");
    for cap in caps.add.iter().flatten() {
        let _ = write!(bounding, ",+{}", cap.to_ascii_lowercase());
    }
    let nnp = if sc.allow_privilege_escalation == Some(false) {
        "--no-new-privs"
    } else {
        "-"
    };
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
    let mut out = vec![ids.uid(user), ids.gid(group), bounding, nnp.to_string()];
    out.extend(c.command.iter().flatten().map(|a| shell_word(a)));
    out.extend(c.args.iter().flatten().map(|a| shell_word(a)));
    out
}

/// The shell test a probe stands for, run like the container (exec) or from the pod's network.
fn probe_check(c: &Container, p: &Probe, ids: &HostIds, fs_group: &str) -> String {
    let port = |port: &IntOrString| -> i32 {
        match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("{}: no port {name}", c.name))
                    .container_port
            }
        }
    };
    if let Some(e) = &p.exec {
        let mut who = run_as(c, ids, fs_group);
        who.truncate(4);
        let cmd: Vec<String> = e.command.iter().flatten().map(|a| shell_word(a)).collect();
        format!("(run {} {} {})", c.name, who.join(" "), cmd.join(" "))
    } else if let Some(h) = &p.http_get {
        format!(
            "http_get {} {} | head -1 | grep -q ' 200 '",
            port(&h.port),
            h.path.as_deref().unwrap_or("/")
        )
    } else if let Some(t) = &p.tcp_socket {
        format!(
            "timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{}'",
            port(&t.port)
        )
    } else {
        panic!("{}: unsupported probe", c.name)
    }
}

fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A fresh work directory for one pod.
pub fn work_dir(pod: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("postwarden-pod-{}-{pod}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
