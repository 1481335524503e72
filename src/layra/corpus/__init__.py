"""Build per-language train / held-out text: from Debian packages, local files or the hub.

    layra corpus debian --langs glg,eng,spa,por --out corpus/
    layra corpus files glg=gl.txt eng=en.jsonl --out corpus/
    layra corpus hf HuggingFaceFW/fineweb-2 --config glg_Latn --lang glg --max-docs 10000 --out corpus/

Every builder writes ``OUT/<source>/<lang>/{train,heldout}.txt`` and
``OUT/manifest.json`` (docs/corpus.md).
"""

from layra.corpus.debian import build_debian_corpus
from layra.corpus.files import build_files_corpus
from layra.corpus.hf import build_hf_corpus
from layra.corpus.langs import LANGS, parse_langs

__all__ = ["LANGS", "build_debian_corpus", "build_files_corpus", "build_hf_corpus", "parse_langs"]
