"""Image reading and self-supervised pair synthesis."""

from .images import IMAGE_EXTENSIONS, ImageReadError, list_images, load_folder, read_image, to_gray_float

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "load_folder", "read_image", "to_gray_float"]
