# 3D Gaussian splatting, forward: EWA projection of N Gaussians (gsplat's conventions), their colours from
# degree-3 spherical harmonics seen from the camera (sh_to_color: + 0.5, clamped at 0, as gsplat), then tile
# binning, depth sort and front-to-back alpha compositing (the Inria rules) into a 64x48 RGB image and the
# final transmittance. Two kernels: splat_project (one program per BLOCK Gaussians; the SH colours are
# fused into it) and splat_raster (a six-launch plan: count -> scan -> emit -> sort -> ranges -> render,
# one program per 16x16 tile). The sh input is [N, 16, 3]: the DC term (a PLY's f_dc_*) then the 15
# higher-band coefficients per channel (f_rest_*, which the PLY stores channel-major).
# Inputs are activated values: scales > 0, quaternions (w, x, y, z) nonzero (normalised in the kernel),
# opacities in (0, 1), viewmat world -> camera (OpenCV axes: x right, y down, z forward), K = [[fx, 0, cx],
# [0, fy, cy], [0, 0, 1]] with fx, fy > 0; pixel (u, v) is sampled at its centre (u + 0.5, v + 0.5).
# `tilefuse run` draws a valid scene (ir/sampling.splat_scenes); a 3DGS PLY renders with `tilefuse render`.
# The image size lives in attributes (attributes do not take header parameters yet); N can be --set:
#   tilefuse run examples/splat_render.tf --target interp --set N=128
graph splat_render(N=256) {
  %means = input f32[N, 3]
  %scales = input f32[N, 3]
  %quats = input f32[N, 4]
  %opacities = input f32[N]
  %sh = input f32[N, 16, 3]
  %viewmat = input f32[4, 4]
  %K = input f32[3, 3]
  %colors = sh_to_color(%sh, %means, %viewmat) {degree=3}
  %proj = project_gaussians(%means, %scales, %quats, %opacities, %viewmat, %K) {camera="pinhole", width=64, height=48}
  %means2d = result(%proj) {index=0}
  %conics = result(%proj) {index=1}
  %depths = result(%proj) {index=2}
  %radii = result(%proj) {index=3}
  %img = rasterize_gaussians(%means2d, %conics, %colors, %opacities, %depths, %radii) {width=64, height=48, background=[0.0, 0.0, 0.0]}
  %image = result(%img) {index=0}
  %T = result(%img) {index=1}
  output image = %image
  output T = %T
}
