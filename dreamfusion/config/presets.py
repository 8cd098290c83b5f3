"""Named override sets ("presets as data"), applied before the user's own overrides.

``cpu``: what makes a 64x64 SDS step take about 0.3 s on a 2-core laptop CPU while keeping the
seed's model: 64 samples across the box instead of 1024, a 64^3 occupancy grid, forward instead
of central finite-difference normals (3 density queries instead of 6), hash tables of 2^16
entries per level instead of 2^19 (Adan updates every entry every step), the 12 coarsest of the
16 levels in use (the finest in use has ~550 cells across the box, several per pixel of a 64x64
render; the seed's ``encoder_max_level``), the hash grid compiled with torch.compile, fp32 guidance.

``shapes``: settings for the offline shapes prior (``guidance=shapes``). Its world has a white
background and objects of one size, seen by the seed's cameras at one distance (3.25) and one field
of view (25 degrees; the prior is trained on exactly these cameras). At the seed's 10 degrees a cube fills the
frame, so a frame of colour was a plausible "cube": the NeRF filled the whole box (IoU 0.39), or,
held back by an opacity penalty, grew star-shaped objects whose size changed with the seed.
An opacity penalty still keeps objects near their true size, in the ``contrast`` form (the mean
of ``sum_i w_i |albedo_i - bg|``): the references' mean of opacity^2 (50 here before) made every
white object a dark translucent shell (no pixel opaque: IoU 0 on all five white prompts), because
against the white background that shell makes the same picture as an opaque white object and pays
a fraction of the penalty.

A guidance scale of 3, the penalty scaled with it (45; it was 150 at 10, as the SDS gradient
scales with the guidance), and normal smoothness 100. Measured with the SDS gradient on renders of
the true primitives: at 10 the prior no longer shrinks a cube drawn too large (its pull on the ring
outside the object -0.011 for a white cube, against +0.028 at 3) and pulls white objects' own
pixels towards the background (+0.027 at 10, +0.006 at 3), so white objects came out translucent
with holes. Over the world (30 prompts, seed 0, make demo's steps): 19/30 pass and mean silhouette
IoU 0.767 (NeRF) / 0.793 (mesh) at 10; 23/30, 0.841 / 0.853 at 3 with normal smoothness 100.

The ambient ratio drawn in [0.6, 1] instead of the seed's [0.1, 1]: at high noise the prior cannot
tell a render's ambient, so its SDS step pulls every render towards the brightness it saw on
average, and a dark render of a white object is pulled lighter, which on the white background is
the way to nothing (``sds_pull``'s step towards the background on a white torus's own pixels at t
500-700: +0.177 at ambient 0.1-0.4, +0.122 at 0.4-0.7, +0.066 at 0.7-1.0; at t 300-500 +0.151,
+0.073, -0.013). Bright renders take most of that pull away. Before, a fade guard did it (above
t = 0.5 the step might not brighten a pixel along its colour, ``model.guidance.fade_guard_t``), but
for a light object the guarded steps are also the ones that shrink an outline drawn too large, so
the yellow and white cubes stayed oversized (meshes 0.87 and 0.93 wide and as tall; true 0.6) and
failed. Seed 0, make demo's steps, NeRF / mesh IoU, guard at 0.5 -> no guard with ambient from 0.5 /
0.6 / 0.7: white cube 0.640 / 0.650 -> 0.791 / 0.796, 0.825 / 0.828, 0.849 / 0.851; yellow cube
0.789 / 0.802 -> 0.868 / 0.878, 0.858 / 0.871, 0.869 / 0.885; white torus 0.854 / 0.798 -> 0.865 /
0.862, 0.820 / 0.809, 0.855 / 0.851; white cone 0.883 / 0.899 -> 0.848 / 0.849, 0.882 / 0.887,
0.854 / 0.854 (with the guard off and the seed's ambient the white torus faded to 0.021). Brighter
costs a coloured torus its shading: the red torus 0.938 / 0.897 -> 0.915 / 0.870 at 0.6, 0.808 /
0.749 at 0.7. The model card has the whole world under this preset.

The start: Magic3D's ball (softplus density, 10 at the centre falling to 0 at radius 0.35) instead
of the seed's exp activation, whose untrained density of about 1 everywhere in the box is a white
fog on the white background. Under it a "white sphere" was the box's fog: 261,505 of 262,144 grid
points at density 1-5, only 627 above 5, and every ray through the box opaque. With empty space
around a ball, the SDS step has to grow the object instead of carving it out of fog; an entropy
penalty of 30 turns what fog is left clear or solid (the model card's section on the start has
the ablation on the six hardest prompts: each alone leaves failures, together five of six pass).
Every cube comes out a drum about as wide as the cube's diagonal (the prior's view labels span a
cube's whole 90-degree period, so it cannot give a cube a yaw; the model card); a drum of the cube's
height passes the score (0.855).

Training rays through a random point of their pixel, drawn anew each step (``jitter``), not its
centre. The prior's images are renders at 64x64 area-averaged to its 32x32, so its outlines are
anti-aliased: a pixel the object half covers is half its colour. A ray through the centre makes
such a pixel all object or all background, and the opacity penalty and the entropy tip it out,
so outlines came in: a torus's tube, which has two outlines and is 8-9 pixels thick at 32x32,
came out thin (the blue torus on seeds 1 and 2: NeRF IoU 0.691 / 0.739,
every view missing a 1-2 pixel ring at the score's 64x64). Rendering the training views at 64x64
(the prior's own area average; 4x the rays) brought seed 1 to 0.869, which showed the cause;
jittered rays cost nothing and do the same in expectation over the steps (0.920 / 0.905; the
model card has the whole world under it).

The run ends on the average of its weights over the last fifth of its steps
(``model.optim.average_from=0.8``, stochastic weight averaging), not on the last step's: at the
constant learning rate each SDS step leaves the shape a draw of the prior's noise, and the torus's
tube, one outline away from another, was the draw's (the blue torus on seed 0 NeRF / mesh IoU 0.778
/ 0.775 at its last step, 0.819 / 0.816 averaged; the purple torus 0.814 / 0.807 -> 0.860 / 0.849).
A learning rate falling over the second half averages the noise too but shrinks the white objects
(white torus 0.899 -> 0.746); the average keeps their size (0.903). The DMTet stage ends on its last
step, as it did.

One camera distance and field of view (3.25, 25 degrees) instead of the seed's ranges (3-3.5 and,
narrowed, 20-30): the prior is told a render's view but not its zoom, and those ranges made one
object appear at sizes 1.78x apart. Its SDS step pulls every render towards the apparent size it saw
on average, whatever the camera (``sds_pull --grow --ambient 0.6 1 --fovy LO HI --radius LO HI``,
the blue torus at t 500-700, pull in on an 18%-too-large render / out on an 18%-too-small one: 0.290
/ 0.052 at the most zoomed-in cameras, 0.144 / 0.185 in the middle, 0.054 / 0.337 zoomed out), so an
object's size was the balance of opposite pulls that differs by shape and colour: coloured tori came
out thin, white cubes and cones large, the blue sphere missed its bar (0.913 / 0.932 against 0.962).
The NeRF alone at one camera, with a prior that saw the whole range, was not enough (blue torus
0.819 -> 0.732: the prior's estimate is still a blend over sizes); with the prior retrained on this
camera (``make prior``: the prior's data takes its cameras from this preset), seed 0 unless named,
NeRF / mesh IoU before -> after: blue torus 0.819 / 0.816 -> 0.944 / 0.942, blue sphere 0.913 /
0.932 -> 0.968 / 0.963, red torus seed 2 0.785 / 0.784 -> 0.969 / 0.960, white cone seed 2 0.733 /
0.731 -> 0.836 / 0.832, white cube 0.840 / 0.836 -> 0.833 / 0.830, red cube 0.894 / 0.895 -> 0.848 /
0.838 (the model card has the whole world under it).
"""

from __future__ import annotations

from dreamfusion.errors import ConfigError

PRESETS: dict[str, list[str]] = {
    "cpu": [
        "trainer.accelerator=cpu",
        "trainer.precision=32",
        "trainer.compile=true",
        "model.renderer.max_steps=64",
        "model.renderer.grid_resolution=64",
        "model.nerf.normal_type=forward_finite_difference",
        "model.nerf.encoder_cfg.log2_hashmap_size=16",
        "model.nerf.encoder_cfg.encoder_max_level=12",
    ],
    # The offline shapes prior: its world's white background (what it saw in training), renders
    # at the 32x32 it scores, a guidance scale, a starting ball in empty space, the contrast
    # opacity penalty, normal smoothness and entropy, bright ambient, rays jittered within their
    # pixels (the module doc says why)
    "shapes": [
        "guidance=shapes",
        "background=static",
        "model.background.background=[1.0, 1.0, 1.0]",
        "model.data.train_dataset.width=32",
        "model.data.train_dataset.height=32",
        "model.guidance_scale=3",
        "model.nerf.density_activation=softplus",
        "model.nerf.blob_density=10",
        "model.nerf.blob_radius=0.35",
        "model.data.train_dataset.fovy_range=[25.0,25.0]",
        "model.data.train_dataset.radius_range=[3.25,3.25]",
        "model.loss.opacity_form=contrast",
        "model.loss.lambda_opacity=45",
        "model.loss.lambda_normal_smoothness=100",
        "model.loss.lambda_entropy=30",
        "model.min_ambient_ratio=0.6",
        "model.data.train_dataset.jitter=true",
        "model.optim.average_from=0.8",
        "model.data.val_dataset.width=128",
        "model.data.val_dataset.height=128",
        "model.data.test_dataset.width=256",
        "model.data.test_dataset.height=256",
    ],
}


# The seed's DreamFusion-DMTet changes, applied by the dmtet-finetune stage to the config saved in
# the NeRF checkpoint it refines (before its presets and the user's overrides).
DMTET_BASE: list[str] = [
    "renderer=nvdiffrast",
    "loss=dmtet",
    "model.latent_iter_ratio=0",
    "model.albedo_iter_ratio=0",
    "model.data.train_dataset.width=512",
    "model.data.train_dataset.height=512",
    "model.guidance.t_range=[0.02,0.5]",
    "model.guidance.t_max_final=null",  # the seed's DMTet range is fixed, whatever the NeRF annealed
    "model.optim.average_from=1.0",  # DMTet ends on its last step, whatever the NeRF averaged
    "trainer.max_steps=5000",
]

# The same names for the dmtet-finetune stage. ``cpu``: the torch rasterizer, a 32^3 tet grid over
# the object, the iso-level chosen on mesh-export's CPU grid (128, as make demo exports), 64x64
# renders (the guidance model resizes them to what it scores), no torch.compile (the hash grid
# is queried only at the visible surface points, a few thousand a step).
# ``shapes``: the shapes prior scores 32x32 images, where a lump of a tenth of the object is two
# pixels: its SDS moves outlines and proportions but cannot see the NeRF's lumps, so the mesh
# regularisers carry the smoothing (normal consistency 4000, Laplacian 5), the offsets move at 10x
# and the signed distances at 3x the base rate (200 steps must do what the seed does in 5000),
# and a guidance scale of 30 (10 let the regularisers shrink thin, lumpy objects:
# measured on the sphere, silhouette IoU 0.788 -> 0.765 at 10, -> 0.796 at 30). Four views a step
# at the prior's own 32x32 (one 64x64 view costs as much): one noisy SDS sample a step bent the
# cube (silhouette IoU 0.828 -> 0.815), four keep it (0.8535 -> 0.8539). The NeRF stage's contrast
# opacity penalty, scaled by the guidance (45 x 30 / 3 = 450): SDS alone grows the surface (a cone
# 2.60 -> 2.65 -> 2.76 of its true 2.09 volume after 0 / 200 / 600 steps), as it grew the NeRF.
# Normal consistency 3000 flattens the cube's faces (noise 4.9 -> 2.0 deg; 200 left 6.4) and the
# silhouette term (1000) holds the NeRF's outline while it does (without it, 3000 shrank the sphere
# 0.932 -> 0.909 and the cone 0.915 -> 0.909). The outline is a few pixels of a 32x32 render at a
# cone's apex, so normal consistency and the high rates still rounded the cone (silhouette IoU
# 0.870 -> 0.862) and the sphere (0.942 -> 0.940): the surface-distance term (1000: each vertex's
# squared distance to the NeRF's solid, in tet cells, over the surface's area) holds the shape in 3D.
# Measured at the faces' centroids, not the vertices: held at its vertices a convex surface shrinks
# by its faces' sagitta (the sphere's silhouette 14 pixels of 6922 smaller than the NeRF's, IoU within
# noise of a drop); held by its area it keeps the NeRF's (6922), which leaves room for normal
# consistency 4000 (3000: the cube's normal noise 6.3 -> 3.4 deg, 4000: 3.1, 5000: 2.9 with the
# sphere's IoU below its NeRF's). The model card has the screens.
DMTET_PRESETS: dict[str, list[str]] = {
    "cpu": [
        "renderer=torch_raster",
        "trainer.accelerator=cpu",
        "trainer.precision=32",
        "trainer.compile=false",
        "model.renderer.grid_resolution=32",
        "model.renderer.iso_resolution=128",
        "model.data.train_dataset.width=64",
        "model.data.train_dataset.height=64",
    ],
    "shapes": [
        "model.data.train_dataset.width=32",
        "model.data.train_dataset.height=32",
        "model.data.train_dataset.batch_size=4",
        "model.guidance_scale=30",
        "model.loss.lambda_normal_consistency=4000",
        "model.loss.lambda_silhouette=1000",
        "model.loss.lambda_surface_distance=1000",
        "model.loss.lambda_laplacian_smoothness=5",
        "model.optim.deform_lr_multiplier=10",
        "model.optim.sdf_lr_multiplier=3",
        "model.loss.lambda_opacity=450",
    ],
}


def expand(names: list[str] | None, table: dict[str, list[str]] = PRESETS) -> list[str]:
    out: list[str] = []
    for name in names or []:
        if name not in table:
            raise ConfigError(f"preset {name!r} does not exist; choose one of {sorted(table)}")
        out += table[name]
    return out


def preset_value(name: str, key: str, table: dict[str, list[str]] = PRESETS) -> str:
    """The value preset ``name`` gives ``key`` (the last, if it sets it twice)."""
    for override in reversed(expand([name], table)):
        k, _, value = override.partition("=")
        if k == key:
            return value
    raise ConfigError(f"preset {name!r} does not set {key}")


SHAPES_GUIDANCE_SCALE = float(preset_value("shapes", "model.guidance_scale"))
"""The shapes preset's guidance scale: the pipelines' default for the offline prior."""
