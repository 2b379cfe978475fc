//! `vane policy check`: every problem of every file, as `file:line:column: field: what`.

use std::path::PathBuf;

/// `vane policy check`: 0 when every file loads, 1 with file:line errors otherwise.
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
                    eprintln!("{}: {e}", p.display());
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
            for p in ps {
                println!("ok  {} ({:?}, steps {:?})", p.name, p.strategy, p.weights());
            }
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
