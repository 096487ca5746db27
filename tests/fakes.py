"""Fake engines for the runtime's tests: the predictor's control flow without a network (numpy only)."""
from __future__ import annotations

import numpy as np

from medsamlite.config import ModelConfig


class BoxEngine:
    """A fake model: the mask of a box is the box itself, with logit 1 + 100 / area (small boxes are surer).

    The embedding is the image's mean, broadcast, so decode calls can be traced back to their slice.
    `reuse_buffers` mimics OpenVINO, which returns the same output buffer on every call.
    """

    def __init__(self, input_size: int = 256, reuse_buffers: bool = False) -> None:
        self.config = ModelConfig(name="box", encoder="none", input_size=input_size)
        self.reuse_buffers = reuse_buffers
        self.encode_calls, self.encoded, self.decode_calls = 0, 0, []
        self._buffer: np.ndarray | None = None

    def encode(self, images: np.ndarray) -> np.ndarray:
        assert images.shape[1:] == (3, self.config.input_size, self.config.input_size) and images.dtype == np.float32
        self.encode_calls += 1
        self.encoded += len(images)
        out = np.broadcast_to(images.mean(axis=(1, 2, 3), dtype=np.float64).astype(np.float32)[:, None, None, None],
                              (len(images), 256, 64, 64))
        if not self.reuse_buffers:
            return np.array(out)
        if self._buffer is None or self._buffer.shape != out.shape:
            self._buffer = np.empty(out.shape, np.float32)
        self._buffer[...] = out
        return self._buffer

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert embeddings.shape == (1, 256, 64, 64)
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        self.decode_calls.append((float(embeddings.reshape(len(embeddings), -1)[0, 0]), boxes.copy()))
        scale = 256 / self.config.input_size
        low = np.full((len(boxes), 1, 256, 256), -1.0, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64) * scale):
            area = max((x1 - x0) * (y1 - y0), 1.0)
            low[i, 0, int(y0):int(y1), int(x0):int(x1)] = 1 + 100 / area
        return low, np.zeros((len(boxes), 1), np.float32)


class ImageEngine(BoxEngine):
    """A fake model whose masks follow the image: inside the box, the pixels brighter than the image's middle grey.

    The embedding is the encoder input's first channel averaged to 64x64, so a transposed, flipped or wrongly
    windowed image gives another label map (BoxEngine's masks depend on the boxes alone).
    """

    def encode(self, images: np.ndarray) -> np.ndarray:
        self.encode_calls += 1
        self.encoded += len(images)
        size = self.config.input_size
        grey = images[:, 0].reshape(len(images), 64, size // 64, 64, size // 64).mean(axis=(2, 4))
        return np.repeat(grey[:, None].astype(np.float32), 256, axis=1)

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = np.repeat(np.repeat(embeddings[0, 0], 4, axis=0), 4, axis=1)  # 64x64 -> the decoder's 256x256
        low = np.full((len(boxes), 1, 256, 256), -1.0, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64) * 256 / self.config.input_size):
            window = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            low[i, 0][window] = grey[window] - 0.5 * (grey.max() + grey.min())
        return low, np.zeros((len(boxes), 1), np.float32)


def write_dicom_series(folder, volume: np.ndarray, spacing=(0.8, 0.7), step: float = 2.5, origin=(-20.0, 10.0, 5.0),
                       orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), series_uid: str = "1.2.826.0.1.3680043.8.498.1",
                       modality: str = "CT", slices=None) -> list:
    """A DICOM series written with pydicom: slice z of `volume` (z, y, x) uint16 at origin + z * step along the
    normal, rows y and columns x; `slices` picks which slices to write (a gap: a missing slice). Returns the files."""
    from pathlib import Path

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    files = []
    for z in range(len(volume)) if slices is None else slices:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"{series_uid}.{z + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series_uid, modality, z + 1
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelSpacing, ds.SliceThickness = list(spacing), step
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = (np.array(origin) + z * step * normal).tolist()
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(volume[z], np.uint16).tobytes()
        path = folder / f"slice_{z:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def compiled_meta(decoders=("dense", "factorised"), precision: str = "f32", **extra) -> dict:
    """The config.json of a compiled folder of `BoxEngine`'s model that holds `decoders`."""
    return {"config": ModelConfig(name="box", encoder="none", input_size=256).to_dict(), "precision": precision,
            "decoders": list(decoders), "prepared": [["embedding", [1, 256, 64, 64]]], "factorised_boxes": 8,
            **extra}


def graph_engine(path, meta: dict, decoder: str = "auto"):
    """A `CompiledSam` whose graphs are `BoxEngine`'s numpy functions: the compiled runtimes' control flow (lazy
    graphs, the decoder pick, padded factorised batches) without a runtime. `calls` counts calls per graph."""
    from collections import Counter

    from medsamlite.runtime.compiled import CompiledSam

    box = BoxEngine()

    class GraphEngine(CompiledSam):
        backend = "fake"

        def __init__(self) -> None:
            super().__init__(path, meta, decoder)
            self.calls: Counter = Counter()
            self._graph("encoder")

        def _open_graph(self, name: str):
            functions = {"encoder": box.encode, "decoder": box.decode, "prepare": lambda e: {"embedding": e.copy()},
                         "factorised": lambda prepared, boxes: box.decode(prepared[0], boxes)}
            return functions[name]

        def _call(self, name: str, *inputs):
            self.calls[name] += 1
            return self._graph(name)(*inputs)

        def _encode_one(self, image):
            return self._call("encoder", image)

        def _decode_one(self, embedding, boxes):
            return self._call("decoder", embedding, boxes)

        def _prepare(self, embedding):
            return self._call("prepare", embedding)

        def _decode_batch(self, prepared, boxes):
            assert len(boxes) == self.factorised_boxes
            return self._call("factorised", prepared, boxes)

    return GraphEngine()
