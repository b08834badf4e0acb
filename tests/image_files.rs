//! Image files a user hands in or asks for: PNG headers that claim absurd sizes, text metadata, and
//! output paths that are not regular files.
mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::png::lying_png;
use diffgentor::image::{write_atomically, MAX_IMAGE_SIDE, MAX_PNG_TEXT_BYTES};
use diffgentor::{ErrorCode, Image};

fn assert_names_limit(message: &str) {
    assert!(
        message.contains(&MAX_IMAGE_SIDE.to_string()) && message.contains("100000"),
        "the error should name the size and the limit: {message}"
    );
}

#[test]
fn png_header_beyond_the_size_limit_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(100_000, 100_000), (100_000, 1), (1, 100_000)] {
        let path = dir.path().join(format!("lying_{w}x{h}.png"));
        std::fs::write(&path, lying_png(w, h)).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 100);
        let err = Image::load_png(&path).expect_err("a 100000-pixel side is over the limit");
        assert_eq!(err.code(), ErrorCode::InvalidArg, "{err}");
        assert_names_limit(&err.to_string());
    }
    // At the limit itself the header is accepted; the missing pixel data is what fails.
    let at_limit = dir.path().join("at_limit.png");
    std::fs::write(&at_limit, lying_png(MAX_IMAGE_SIDE, 1)).unwrap();
    let err = Image::load_png(&at_limit).expect_err("no pixel data");
    assert!(err.to_string().contains("not a readable PNG"), "{err}");
}

#[test]
fn raw_buffers_beyond_the_size_limit_are_refused() {
    let err = Image::from_raw(&[0; 3], MAX_IMAGE_SIDE + 1, 1, 3, 0).expect_err("too wide");
    assert_eq!(err.code(), ErrorCode::InvalidArg);
    assert!(
        err.to_string().contains(&MAX_IMAGE_SIDE.to_string()),
        "{err}"
    );
}

#[test]
fn cli_refuses_lying_pngs_as_image_mask_and_montage_input() {
    let dir = tempfile::tempdir().unwrap();
    let lying = dir.path().join("lying.png");
    std::fs::write(&lying, lying_png(100_000, 100_000)).unwrap();
    let good = common::repo().join("tests/golden/edit/image_64x64.png");
    let (lying, good) = (lying.display().to_string(), good.display().to_string());
    let model = common::model_dir("tiny-sd").display().to_string();
    let out = dir.path().join("out.png");
    let out_s = out.display().to_string();
    let edit = |image: &str, mask: Option<&str>| {
        let mut args = vec!["edit", "--model", &model, "--prompt", "x", "--steps", "2"];
        args.extend(["--image", image, "--output", &out_s]);
        if let Some(mask) = mask {
            args.extend(["--mask", mask]);
        }
        common::dg(&args)
    };
    for output in [
        edit(&lying, None),
        edit(&good, Some(&lying)),
        common::dg(&["montage", "--output", &out_s, &good, &lying]),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("invalid argument"), "{stderr}");
        assert_names_limit(&stderr);
        assert!(!out.exists(), "nothing is written");
    }
}

/// (keyword, text) pairs.
type TextChunks = Vec<(String, String)>;

/// The Latin-1 `tEXt` and the UTF-8 `iTXt` chunks of a PNG.
fn png_chunks(path: &Path) -> (TextChunks, TextChunks) {
    let file = std::fs::File::open(path).unwrap();
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let info = reader.info();
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    let utf8 = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (latin1, utf8)
}

fn small_image() -> Image {
    Image::from_raw(&[7; 4 * 4 * 3], 4, 4, 3, 12).unwrap()
}

#[test]
fn png_text_is_latin1_text_or_utf8_itxt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.png");
    let prompt = "un café, ein Bär, 一只猫 🦊";
    small_image()
        .save_png(&path, &[("parameters", prompt), ("plain", "café")])
        .unwrap();
    let (latin1, utf8) = png_chunks(&path);
    assert_eq!(latin1, vec![("plain".into(), "café".into())]);
    assert_eq!(utf8, vec![("parameters".into(), prompt.into())]);
}

#[test]
fn png_text_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    // 128 KiB of a three-byte character: the cut must land on a character boundary.
    let huge = "猫".repeat(128 * 1024 / 3);
    small_image()
        .save_png(&path, &[("parameters", &huge)])
        .unwrap();
    let (_, utf8) = png_chunks(&path);
    let text = &utf8[0].1;
    assert!(text.len() <= MAX_PNG_TEXT_BYTES && text.len() > MAX_PNG_TEXT_BYTES - 3);
    assert!(huge.starts_with(text.as_str()));
    assert!(std::fs::metadata(&path).unwrap().len() < (MAX_PNG_TEXT_BYTES + 1024) as u64);
}

fn refused(path: &Path, what: &str) {
    let err = write_atomically(path, b"new").expect_err("not a regular file");
    assert_eq!(err.code(), ErrorCode::InvalidArg, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(what) && message.contains("not a regular file"),
        "{message}"
    );
}

#[test]
fn outputs_never_replace_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a_dir");
    std::fs::create_dir(&sub).unwrap();
    refused(&sub, "a directory");
    assert!(sub.is_dir());

    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    refused(&fifo, "a FIFO");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    refused(&socket, "a socket");

    // A link to a FIFO is judged by what it points to.
    let link_to_fifo = dir.path().join("link_to_fifo");
    std::os::unix::fs::symlink(&fifo, &link_to_fifo).unwrap();
    refused(&link_to_fifo, "a FIFO");
    assert!(std::fs::symlink_metadata(&link_to_fifo)
        .unwrap()
        .file_type()
        .is_symlink());

    // A device node (made only where the test may: as root), e.g. /dev/full's numbers.
    let device = dir.path().join("full");
    let c_path = std::ffi::CString::new(device.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; fails harmlessly without privileges.
    if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) } == 0 {
        refused(&device, "a device");
        assert!(std::fs::symlink_metadata(&device)
            .unwrap()
            .file_type()
            .is_char_device());
    }
}

#[test]
fn outputs_through_symlinks_replace_the_file_pointed_to() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.png");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("link.png");
    std::os::unix::fs::symlink("real.png", &link).unwrap();
    write_atomically(&link, b"new").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"new");

    // A dangling link creates the file it names.
    let dangling = dir.path().join("dangling.png");
    std::os::unix::fs::symlink(dir.path().join("sub/target.png"), &dangling).unwrap();
    write_atomically(&dangling, b"made").unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("sub/target.png")).unwrap(),
        b"made"
    );

    // A loop is an error, and no temporary file is left behind.
    let a = dir.path().join("loop_a");
    let b = dir.path().join("loop_b");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = write_atomically(&a, b"x").expect_err("loop");
    assert!(err.to_string().contains("too many links"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn outputs_with_the_longest_names_are_written() {
    let dir = tempfile::tempdir().unwrap();
    // 250 bytes (NAME_MAX is 255) of ASCII, of three-byte characters (which a cut at a fixed
    // byte count would split), and a name of the full 255 bytes.
    for name in [
        format!("{}.png", "a".repeat(246)),
        format!("{}.png", "猫".repeat(82)),
        "x".repeat(255),
    ] {
        assert!(name.len() >= 250 && name.len() <= 255, "{}", name.len());
        let path = dir.path().join(&name);
        write_atomically(&path, b"first").unwrap_or_else(|e| panic!("{}: {e}", name.len()));
        small_image().save_png(&path, &[]).unwrap();
        assert_eq!(Image::load_png(&path).unwrap(), small_image());
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "no temporary file is left: {names:?}");
}

#[test]
fn cli_metadata_keeps_utf8_prompts_and_the_settings_line_of_huge_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fox.png");
    let model = common::model_dir("digits").display().to_string();
    // 60 KB: under the prompt limit, far over what a text chunk may hold.
    let prompt = format!("ein Fuchs 🦊 {}", "狐".repeat(20_000));
    let output = common::dg(&[
        "generate",
        "-q",
        "--model",
        &model,
        "--prompt",
        &prompt,
        "--steps",
        "1",
        "--seed",
        "1",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (latin1, utf8) = png_chunks(&out);
    assert!(latin1.is_empty(), "{latin1:?}");
    let parameters = &utf8[0].1;
    assert!(
        parameters.starts_with("ein Fuchs 🦊 狐狐"),
        "{}",
        &parameters[..40]
    );
    assert!(
        parameters.contains("\nSteps: 1, Sampler:"),
        "the settings line survives"
    );
    assert!(std::fs::metadata(&out).unwrap().len() < 16 * 1024);
}

#[test]
fn service_images_decode_as_png_jpeg_or_webp() {
    let original = Image::from_raw(
        &(0..16 * 8 * 3)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
        16,
        8,
        3,
        48,
    )
    .unwrap();
    let png = original.encode_png(&[]).unwrap();
    assert_eq!(Image::decode(&png).unwrap(), original);

    let jpeg = original.encode_jpeg(95).unwrap();
    let decoded = Image::decode(&jpeg).unwrap();
    assert_eq!((decoded.width, decoded.height), (16, 8));
    let worst = decoded
        .pixels
        .iter()
        .zip(&original.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst < 64,
        "a JPEG of the same picture, off by {worst} at most"
    );

    let mut webp = Vec::new();
    image_webp::WebPEncoder::new(&mut webp)
        .encode(&original.pixels, 16, 8, image_webp::ColorType::Rgb8)
        .unwrap();
    assert_eq!(Image::decode(&webp).unwrap(), original, "lossless WebP");

    for (bytes, needle) in [
        (&b"GIF89a......"[..], "not a PNG, JPEG or WebP"),
        (&[], "not a PNG, JPEG or WebP"),
        (&jpeg[..20], "not a readable JPEG"),
        (&webp[..16], "not a readable WebP"),
        (&png[..30], "not a readable PNG"),
    ] {
        let err = Image::decode(bytes).expect_err(needle);
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains(needle), "{err}");
    }
    // A PNG header over the limit is refused from bytes as from a file.
    let err = Image::decode(&lying_png(100_000, 8)).expect_err("too wide");
    assert_names_limit(&err.to_string());
}

#[test]
fn image_sizes_are_read_from_headers_without_decoding() {
    let original = small_image();
    let png = original.encode_png(&[]).unwrap();
    let jpeg = original.encode_jpeg(90).unwrap();
    let mut webp = Vec::new();
    image_webp::WebPEncoder::new(&mut webp)
        .encode(&original.pixels, 4, 4, image_webp::ColorType::Rgb8)
        .unwrap();
    for bytes in [&png, &jpeg, &webp] {
        assert_eq!(Image::dimensions(bytes).unwrap(), (4, 4));
    }
    // What a header claims is all that is read: a 16384x16384 PNG holding one empty block.
    assert_eq!(
        Image::dimensions(&lying_png(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)).unwrap(),
        (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    );
    let err = Image::dimensions(&lying_png(100_000, 8)).expect_err("too wide");
    assert_names_limit(&err.to_string());
    for (bytes, needle) in [
        (&b"GIF89a......"[..], "not a PNG, JPEG or WebP"),
        (&jpeg[..4], "not a readable JPEG"),
        (&png[..20], "not a readable PNG"),
    ] {
        let err = Image::dimensions(bytes).expect_err(needle);
        assert_eq!(err.code(), ErrorCode::InvalidArg);
        assert!(err.to_string().contains(needle), "{err}");
    }
}
