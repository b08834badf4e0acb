//! Output file names, the ancestor's rules: `{index:06}.png` (`{index:06}_{sub:02}.png` for several
//! images per prompt), or with an output-name column its value as a path under the output dir
//! (`.png`, `.jpg`, `.jpeg` kept, `.png` appended to anything else; `NAME_{sub:02}.EXT` for several).
//! A name that could leave the output dir is refused for its row.
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The image formats an output name may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
}

impl Format {
    /// The format of a path, by its (already normalised) extension.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg") => {
                Format::Jpeg
            }
            _ => Format::Png,
        }
    }
}

/// The paths, relative to the output dir, of the `count` images of row `index`, named after
/// `name` (the output-name column's value) when there is one.
pub fn relative_paths(
    index: usize,
    name: Option<&str>,
    count: usize,
) -> Result<Vec<PathBuf>, String> {
    let (stem, ext) = match name {
        None => (PathBuf::from(format!("{index:06}")), "png".to_string()),
        Some(name) => split_name(name)?,
    };
    if count == 1 {
        return Ok(vec![stem.with_file_name(file_name(&stem, None, &ext))]);
    }
    Ok((0..count)
        .map(|sub| stem.with_file_name(file_name(&stem, Some(sub), &ext)))
        .collect())
}

fn file_name(stem: &Path, sub: Option<usize>, ext: &str) -> String {
    let base = stem
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match sub {
        Some(sub) => format!("{base}_{sub:02}.{ext}"),
        None => format!("{base}.{ext}"),
    }
}

/// An output name as a relative path without its image extension, and that extension: `a/b/1` ->
/// (`a/b/1`, `png`), `a/b/1.jpg` -> (`a/b/1`, `jpg`), `a/b/1.5` -> (`a/b/1.5`, `png`).
fn split_name(name: &str) -> Result<(PathBuf, String), String> {
    if name.contains('\0') {
        return Err(format!("output name {name:?} contains a NUL byte"));
    }
    let path = Path::new(name);
    if path.is_absolute() {
        return Err(format!(
            "output name {name:?} is absolute: it must be a path relative to the output dir"
        ));
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "output name {name:?} contains `..`: it must stay inside the output dir"
                ))
            }
        }
    }
    if clean.as_os_str().is_empty() || name.ends_with('/') {
        return Err(format!("output name {name:?} names no file"));
    }
    let ext = clean
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()));
    Ok(match ext {
        Some(ext) => (clean.with_extension(""), ext),
        None => (clean, "png".to_string()),
    })
}

/// Refuses a path that would resolve outside `root` (whose canonical form is `canonical_root`)
/// through a symlink already on disk (a linked directory on the way, or a link at the file
/// itself); parts not made yet are created as plain directories, which stay inside.
pub fn check_inside(root: &Path, canonical_root: &Path, relative: &Path) -> Result<(), String> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Err(_) => return Ok(()),
            Ok(meta) if meta.file_type().is_symlink() => {
                let escapes = current
                    .canonicalize()
                    .map_or(true, |target| !target.starts_with(canonical_root));
                if escapes {
                    return Err(format!(
                        "output {} resolves outside the output dir through the symlink {}",
                        relative.display(),
                        current.display()
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Who writes which file: the first row (in input order) to claim a path owns it; a later one
/// gets an error instead of silently overwriting it. The folders on the way are claimed too, so a
/// row writing `a.png` and another writing `a.png/x.png` conflict in input order, not by which
/// one reaches the disk first.
#[derive(Default)]
pub struct Claims(HashMap<PathBuf, Claim>);

#[derive(Clone, Copy)]
enum Claim {
    /// A file, written by this row.
    File(usize),
    /// A folder, needed first by this row.
    Folder(usize),
}

impl Claims {
    /// Claims every path (and its folders) for row `index`, or says which row's claim it
    /// contradicts (claiming none).
    pub fn claim(&mut self, index: usize, paths: &[PathBuf]) -> Result<(), String> {
        for path in paths {
            match self.0.get(path) {
                Some(Claim::File(owner)) => {
                    return Err(format!(
                        "output {} is already written by row {owner}: two rows may not write the \
                         same file",
                        path.display()
                    ))
                }
                Some(Claim::Folder(owner)) => {
                    return Err(format!(
                        "output {} is a folder row {owner} writes into: a row may not write a \
                         file there",
                        path.display()
                    ))
                }
                None => {}
            }
            for folder in folders(path) {
                if let Some(Claim::File(owner)) = self.0.get(folder) {
                    return Err(format!(
                        "output {} needs the folder {}, which row {owner} writes as a file",
                        path.display(),
                        folder.display()
                    ));
                }
            }
        }
        for path in paths {
            for folder in folders(path) {
                self.0
                    .entry(folder.to_path_buf())
                    .or_insert(Claim::Folder(index));
            }
            self.0.insert(path.clone(), Claim::File(index));
        }
        Ok(())
    }

    /// Every claimed file with the row that writes it.
    pub fn files(&self) -> impl Iterator<Item = (&Path, usize)> {
        self.0.iter().filter_map(|(path, claim)| match claim {
            Claim::File(owner) => Some((path.as_path(), *owner)),
            Claim::Folder(_) => None,
        })
    }
}

/// The folders a relative output path goes through: `a/b/c.png` -> `a/b`, `a`.
fn folders(path: &Path) -> impl Iterator<Item = &Path> {
    path.ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(index: usize, name: Option<&str>, count: usize) -> Vec<String> {
        relative_paths(index, name, count)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn default_names_are_the_row_index() {
        assert_eq!(names(7, None, 1), ["000007.png"]);
        assert_eq!(
            names(1234567, None, 2),
            ["1234567_00.png", "1234567_01.png"]
        );
    }

    #[test]
    fn column_names_keep_image_extensions_and_append_png_to_others() {
        assert_eq!(names(0, Some("aaa/bb/1"), 1), ["aaa/bb/1.png"]);
        assert_eq!(names(0, Some("aaa/bb/1.jpg"), 1), ["aaa/bb/1.jpg"]);
        assert_eq!(names(0, Some("x.JPEG"), 1), ["x.JPEG"]);
        assert_eq!(names(0, Some("./a/1.5"), 1), ["a/1.5.png"]);
        assert_eq!(names(0, Some("a.webp"), 1), ["a.webp.png"]);
        assert_eq!(
            names(0, Some("aaa/bb/1"), 2),
            ["aaa/bb/1_00.png", "aaa/bb/1_01.png"]
        );
        assert_eq!(names(0, Some("c.jpg"), 2), ["c_00.jpg", "c_01.jpg"]);
        assert_eq!(Format::of(Path::new("c_00.jpg")), Format::Jpeg);
        assert_eq!(Format::of(Path::new("c.png")), Format::Png);
    }

    #[test]
    fn escaping_names_are_refused() {
        let err = |name: &str| relative_paths(0, Some(name), 1).unwrap_err();
        assert!(err("/etc/x").contains("is absolute"));
        assert!(err("a/../../x").contains("contains `..`"));
        assert!(err("a\0b").contains("NUL byte"));
        assert!(err("").contains("names no file"));
        assert!(err("dir/").contains("names no file"));
    }

    #[test]
    fn the_second_claim_of_a_path_is_refused() {
        let mut claims = Claims::default();
        let a = vec![PathBuf::from("a.png")];
        claims.claim(0, &a).unwrap();
        let err = claims.claim(3, &a).unwrap_err();
        assert!(err.contains("already written by row 0"), "{err}");
        claims.claim(4, &[PathBuf::from("b.png")]).unwrap();
    }

    #[test]
    fn a_file_and_a_folder_of_the_same_name_conflict_in_input_order() {
        let mut claims = Claims::default();
        claims.claim(0, &[PathBuf::from("a.png")]).unwrap();
        let err = claims
            .claim(1, &[PathBuf::from("a.png/x.png")])
            .unwrap_err();
        assert_eq!(
            err,
            "output a.png/x.png needs the folder a.png, which row 0 writes as a file"
        );
        claims.claim(2, &[PathBuf::from("d/e/f.png")]).unwrap();
        claims.claim(3, &[PathBuf::from("d/e/g.png")]).unwrap();
        let err = claims.claim(4, &[PathBuf::from("d/e")]).unwrap_err();
        assert_eq!(
            err,
            "output d/e is a folder row 2 writes into: a row may not write a file there"
        );
        let mut files: Vec<(String, usize)> = claims
            .files()
            .map(|(p, owner)| (p.display().to_string(), owner))
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                ("a.png".to_string(), 0),
                ("d/e/f.png".to_string(), 2),
                ("d/e/g.png".to_string(), 3)
            ]
        );
    }
}
