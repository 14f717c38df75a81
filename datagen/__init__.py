"""Generation and inspection of OGBench datasets (design and data facts: docs/DATA.md).

``python -m datagen`` generates (``datagen.generate``, with the manipulation oracle recipe in ``datagen.recipe`` and the
antmaze navigate recipe in ``datagen.locomaze``); ``python -m datagen.expert`` trains the antmaze walker (SAC);
``python -m datagen.info FILE`` inspects a file or shard directory and validates ``.npz`` files.
"""
