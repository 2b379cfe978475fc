//! `vane policy check`: every problem of every file, as `file:line:column: field: what`.

use std::path::PathBuf;

/// `vane policy check`: 0 when every file loads, 1 with every problem as `file:line:column: field: what`.
pub fn policy_check(paths: Vec<PathBuf>) -> i32 {
    let paths = if paths.is_empty() { vec![PathBuf::from("policies")] } else { paths };
    let mut files = vec![];
    for p in &paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => files.extend(
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))),
                ),
                Err(e) => {
                    eprintln!("{}", crate::policy::PolicyFileError::unlocated(p, &e));
                    return 1;
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    match crate::policy::load_files(&files) {
        Ok(ps) => {
            let strategy = |p: &crate::policy::Policy| match p.strategy {
                crate::policy::Strategy::Canary => "canary",
                crate::policy::Strategy::BlueGreen => "blue-green",
            };
            let ok: String =
                ps.iter().map(|p| format!("ok  {} ({}, steps {:?})\n", p.name, strategy(p), p.weights())).collect();
            let _ = super::output::emit(&ok);
            0
        }
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            1
        }
    }
}
