"""The demo world: procedural stimuli, a simulated visual cortex and 4 simulated subjects.

Quick start::

    from mindeye_core.data.demo import DemoWorldConfig, generate_demo_world, load_demo_labels
    root = generate_demo_world("/tmp/demo", DemoWorldConfig.small())
    ds = open_dataset(root)            # the canonical reader
    labels = load_demo_labels(root)    # categories / colours / sizes / positions per image

See ``docs/demo_world.md`` for the model, the knobs and measured noise ceilings.
"""

from .cortex import AREAS, CHANNEL_NAMES, FIELD_OF_VIEW_DEG, FeatureExtractor, SimulatedCortex
from .stimuli import (
    BACKGROUNDS,
    CATEGORIES,
    COLOUR_NAMES,
    COLOURS,
    POSITIONS,
    SIZE_NAMES,
    SceneSpec,
    StimulusLabels,
    caption,
    render_scene,
    render_scenes,
    sample_scenes,
)
from .world import (
    DemoWorldConfig,
    demo_config_of,
    ensure_demo_world,
    generate_demo_world,
    load_demo_labels,
    load_voxel_table,
    noise_ceiling_summary,
    simulate_subject,
    trial_schedule,
)

__all__ = [
    "AREAS",
    "BACKGROUNDS",
    "CATEGORIES",
    "CHANNEL_NAMES",
    "COLOURS",
    "COLOUR_NAMES",
    "DemoWorldConfig",
    "FIELD_OF_VIEW_DEG",
    "FeatureExtractor",
    "POSITIONS",
    "SIZE_NAMES",
    "SceneSpec",
    "SimulatedCortex",
    "StimulusLabels",
    "caption",
    "demo_config_of",
    "ensure_demo_world",
    "generate_demo_world",
    "load_demo_labels",
    "load_voxel_table",
    "noise_ceiling_summary",
    "render_scene",
    "render_scenes",
    "sample_scenes",
    "simulate_subject",
    "trial_schedule",
]
