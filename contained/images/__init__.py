"""Images: references, the store (an OCI layout read by `layout`, filled by `pull` through
skopeo), the local registry, and layers unpacked safely (`unpack`: the verified stream and the
layer cache; `tar_extract`: one entry at a time, its owner, mtime and xattrs by
`entry_metadata`; `safepath`). Notebooks 04 and 07. Data flows from here to
`contained.runtime`.
"""
