"""The image store: pulled images in one OCI layout, and their layers unpacked once.

CONTRACT (implemented by the store work; the runtime relies on exactly this):

    class Store:
        Store(home: Path | None = None)          # defaults to contained.home.home_path()
        .pull(ref: str, ...) -> Image
        .images() -> list[Image]
        .image(ref: str) -> Image                # raises ImageNotFound (hint: pull / import)
        .remove(ref: str) -> None
        .layer_dirs(image: Image) -> list[Path]  # bottom layer first, each unpacked once
        .unpack(ref: str, dest: Path) -> Image   # flattened, whiteouts applied

    Image: .name (normalised reference), .digest (manifest digest), .config (ImageConfig),
           .layers (list of (Descriptor, diff_id)), .size
    ImageConfig: .env (list "K=V"), .entrypoint (list|None), .cmd (list|None),
                 .working_dir (str), .user (str), .architecture (str), .os (str)
"""
