"""manage.py engine_server [--address PATH]: one engine that several worker processes share.

On a GPU box, one per GPU (CUDA_VISIBLE_DEVICES picks it): the model and its KV cache are
loaded once, and every `celery worker` started with CHAT_ENGINE_ADDRESS set to the same path
feeds this engine instead of loading its own, so their task threads spread over processes
while the GPU runs one batch (docs/engine.md, "One engine, several worker processes")."""
from dataclasses import replace

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference import EngineConfig
from inference.engine_process import serve


class Command(BaseCommand):
    help = "Load the model once and serve every worker process that connects to the socket."

    def add_arguments(self, parser):
        parser.add_argument("--address", default=settings.INFERENCE_ENGINE["address"] or str(settings.DATA_DIR / "engine.sock"),
                            help="the Unix socket to listen on (default: CHAT_ENGINE_ADDRESS, else DATA_DIR/engine.sock)")

    def handle(self, *args, address, **options):
        # This process is the engine: the settings' address names where to listen, not a server to join.
        config = replace(EngineConfig(**settings.INFERENCE_ENGINE), address="", process="off")
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        try:
            serve(config, address)
        except RuntimeError as error:
            raise CommandError(str(error)) from None
