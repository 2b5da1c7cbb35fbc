"""fastvideo-example-plugin: a complete third-party fastvideo plugin, written as a template.

It registers the ``example`` model family (a small video DiT of its own, loaded from a
diffusers-format folder), the ``example-math`` attention backend and the ``fv example`` command
group. Nothing here is imported by ``fastvideo`` directly: the core finds
:mod:`fastvideo_example.plugin` through the ``fastvideo`` entry-point group.
"""
