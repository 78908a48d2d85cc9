"""Getting data onto the rented box: datasets and base models from the Hub, URLs, archives, galleries and boorus.

- ``sources``: what a SOURCE string is (Hub repo id, http(s) URL, civitai link, gallery/booru page, local
  folder or archive) and the credentials a host needs (from the environment / saved login, never argv);
- ``transfer``: ``download_url``, resumable HTTP(S) with size and sha256 checks and clear errors;
- ``archives``: ``extract_archive`` (zip / tar unpacked safely) and ``copy_folder``;
- ``hub_files``: ``download_from_hub`` (Hugging Face dataset/model repos);
- ``gallery``: ``download_gallery`` (gallery-dl as a subprocess, metadata JSON kept beside each image);
- ``datasets``: ``download_dataset``, any SOURCE into a dataset folder;
- ``model_store``: ``download_model``, a base model stored once under ``models/<name>/`` with ``model.json``;
- ``notebook``: notebook 01's download cells; ``demo``: the demo's "dataset in" step.

CLI: ``python -m helpers.download SOURCE --to DIR`` (dataset), ``--model NAME`` (base model into the workspace).
"""
