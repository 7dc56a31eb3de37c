"""The ink masks of MedMNIST-C's stain deposit (medmnistc 0.1.0 ``medmnistc/assets/inks.npz``, Apache-2.0,
sha256 76a895e8f4ba6f98cc13fffd6060e1b2ef037e7baee6c5393732346a40eecf0f), as packed bits.

``StainDeposit.apply`` reads ``inks[str(max(3, severity))]`` with severity 0-4, so only the masks
"3" (ten 24x24) and "4" (ten 32x32) are ever used; they are 0/1 arrays (stored uint64 in the file).
Made by ``np.packbits(inks[key].astype(np.uint8).ravel())``, base64-encoded.
"""
from __future__ import annotations

import base64
from functools import lru_cache

import numpy as np

_PACKED = {
    "3": ((10, 24, 24), (
        "AP4AA/8AA//AB//gH//gH//gH//4f//4f//wf//4P//4H//wH//gD//wD//wD//wD//wB//gB//gAGPgAAPgAAGAAAAAAAAA"
        "AAAAD/AAD/4AD/4AD/8AH/84H//8H///P///f///////////f///P///P//+H//8D//8D//4D//wA/7gA/wAAfgAAPAAAAAA"
        "AAAAAHAAAAAAAP8AGf8GP//mH//+///+f///f//////////////////////8H//+H//8f//4A//wAM/wAAfwAADwAADAAAAA"
        "AA8AAH/gA//wB//wD//gf//8///+///////////////////////////////////////+f//8P//8P//4H//4A//wAf+AAHgA"
        "A/QAB/+AB//gD//wH//wH//4P//8f//8f//+f//+////////////////P//+P//+H//8D//8D//8D//8B//wA//gAf/gAf/A"
        "AA+AAD/AAD/wAD/wD//wH//wP//8f//4///4///8///8///w///wP//wf//wP//wH//wD//wD//wD//gB//AAAAAAAAAAAAA"
        "Af+AA//AE//wP//4P//8f//+///8///+///+f//+f//+f//+P//+f//+P//+P//+H//8H//4D//gD//wD//wB//AA/8AAHwA"
        "AAAAAAAAADAAAHuAAf+AA//gA//gA//gA//gP//g///A///A///A///A///gf//gD//gB//wH//gOH+APHcACHMAABwAABwA"
        "AA+AAA/AACfAAP8AAP/AAP/AB//AD//8D//8D//4H//wH//0D//+P//+P//4H//4H//4H//wH//wH//wH/vAA/PAAMAAAAAA"
        "AHgAAHwAAH8AA/+AA//AA//AH//gP//gP//gP//8P//+P///H///H///H///H///D///D//+D//+B//wB/fwA8OAAAAAAAAA"
    )),
    "4": ((10, 32, 32), (
        "AAAAAAAAAAAH5kAAB+4AAA//8AAP//wAH///AD///wB///4Af//+AD///wA////gH///8B////AH///wB///4D///+A////+"
        "P////z////8/////P////x///zwf//uYD//7AAC8+AAAPHgAABx4AAAcAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADwAAAB/gAA"
        "A/8AAAP/wAAP//gAf///gH///4B////A////wP///9j////8/////P////7////+f////n////x////4f///+H////g////8"
        "H////Af//3wD//94AD//wAA//8AAP//AAB//wAAP+YAAB/gAAAAAAAAAAAAAADgAAAH5YAAH//AAP/+wAH//0AB//9AD///g"
        "f///8H///+B////gP///8B////7P//+X3///gN////j////8/////P////3////g////wH///4B/7/+ABu//kAX//wADvecA"
        "AzYEAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB4AAAA/OcAA//3gAP//8AD///AB///wA///8Af///AP///w"
        "D///8B////A////wP///8P////j////gf///4H///8A///8AP///AB///4AH///AAP//wAD//+AB///gAd//wAD//4AAf/+A"
        "AA//gAAM/oAAAAAAAAAAAAAAcGAAAf/wAAf/8AA///gAf//gAH//4AP///B////4f///4D////A////+D///3w///8D////5"
        "/////P////7/////////+P///+B////Af///wB///8AH//+ABv//gAP/NgAAH4AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAgA"
        "AHgAAAH/gAAB/8AAA//6AAP//wAD///AA///4AP//+AD///gP///wD///8Bv///AD///wH////B////w////4D///+A////o"
        "P////H////h////4f///+D/7/+C/8f4AH/D+AA/gAAAJgCAAAAAAAAAAAAAAAAAAAA4AAAA/AAAAP8AAAD/4AAA/+gAB//4A"
        "Af/+AAH//gAD//4AD///AD///wA///+4P////D////4////+P////z////8P////D////w////8P////D////gf///4H///8"
        "A///4AP//+AD///gAf+eAAH+HgAAeAAAAAAAAAAAAAAAA+cAAAP/AAAH/4ADx/+AB8f/gAf3/4Af//8AH///4B///+Af///g"
        "D///wB///9Af///wD///4B///+A////gPf//wDf//+AB//9gAf/+QAfv/gAH7/4AB9//AAKf/gAAP/4AAH/YAAAjgAAAB+AA"
        "AAfgAAAP4AAAAfAAAAHgAAAAAAAAAAAAAAAAAAAAAAAAB/AAAA/4AAAf+YAAP/+A/7//wP///4D////g////8P////D////A"
        "3///wP///8Af///AH///gA///wDv//4A5//+AOf//ABn//wAAf/+AAD/+AAD3/wAAc/8AAAH2AAA9wAAAPcAAABgAAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAABkAAAA/wfAAP//4AL//8AH///gB///8Af///wD///8A///+Af///IP///zz///54f///8"
        "H///8B///3AP//8AD///AAP//wAAP/4AAD/8AAA/+OAAPfPAAD+DwAAP84AAH/AAAB/AAAAPAAA="
    )),
}


@lru_cache(maxsize=None)
def inks(key: str) -> np.ndarray:
    """The 0/1 masks of one ink size, uint8 (10, side, side)."""
    shape, chunks = _PACKED[key]
    bits = np.unpackbits(np.frombuffer(base64.b64decode("".join(chunks)), dtype=np.uint8))
    out = bits[: int(np.prod(shape))].reshape(shape)
    out.flags.writeable = False
    return out
