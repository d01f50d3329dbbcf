"""The data layer, one module per step of the flow:

    load -> (formats/, the adapters) -> (chat_template) -> tokenization (label rules in mask) -> collate
    prepare: the single call that runs the steps and returns exactly the rows training sees;
    mixture: a `datasets:` mixture's draw by weight; packing: `packing: bfd` bins.

Modules here import only `sft_recipe.formats`, `sft_recipe.recipe`, `errors`, `console` and each
other, never the model or training layers.
"""
