"""Images made from containers: ``contained build`` (a Containerfile, step by step) and
``contained commit`` (a container's changes). Taught in notebook 09 ("Build an image").

It sits above the runtime, since every RUN step is a container; the layer format itself (an
upper directory → an OCI layer) is the images package's `contained.images.upperlayer`.
"""
