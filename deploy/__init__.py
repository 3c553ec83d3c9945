"""Deployment files of ser (KubeRay RayService, its image) and their generator; not part of the installed wheel.

``python -m deploy.make_rayservice`` writes ``deploy/rayservice.yaml`` and ``deploy/rayservice-gpu-patch.yaml``
from ``conf/serve.yaml``; see ``deploy/README.md``.
"""
