"""Small, pure geometry helpers shared by data generation, evaluation and the reconstruction pipeline.

Conventions used everywhere in slam3r:

* cameras follow OpenCV: x right, y down, z forward; pixel ``(u, v)`` has its centre at integer coordinates;
* poses are 4x4 camera-to-world matrices (``c2w``) unless a name says otherwise, in metres;
* a similarity transform is a tuple ``(s, R, t)`` acting as ``x -> s * R @ x + t``.

Functions documented as accepting "arrays" work on numpy arrays and on torch tensors alike.
"""

from slam3r.geometry.camera import (
    CropResize,
    backproject_depth,
    crop_intrinsics,
    crop_resize_intrinsics,
    depth_to_world,
    input_crop_resize,
    intrinsics_from_fov,
    pixel_grid,
    project_points,
    resize_intrinsics,
)
from slam3r.geometry.transforms import (
    apply_sim3,
    invert_pose,
    invert_sim3,
    matrix_to_sim3,
    quat_to_rotmat,
    robust_umeyama,
    rotation_angle_deg,
    rotmat_to_quat,
    sim3_to_matrix,
    transform_points,
    umeyama,
)

__all__ = [
    "CropResize",
    "apply_sim3",
    "backproject_depth",
    "crop_intrinsics",
    "crop_resize_intrinsics",
    "depth_to_world",
    "input_crop_resize",
    "intrinsics_from_fov",
    "invert_pose",
    "invert_sim3",
    "matrix_to_sim3",
    "pixel_grid",
    "project_points",
    "quat_to_rotmat",
    "robust_umeyama",
    "rotation_angle_deg",
    "resize_intrinsics",
    "rotmat_to_quat",
    "sim3_to_matrix",
    "transform_points",
    "umeyama",
]
