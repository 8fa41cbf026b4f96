/* plantid field app: a photo file -> the model's uint8 S x S x 3 input, as plantid.data.images does it.

   Decoding: the browser's own decoder, EXIF orientation applied ("from-image") and embedded
   colour profiles ignored ("none"), as Pillow does; transparent pixels are composited on white.
   Resizing: a port of Pillow's ImagingResample (bilinear, antialiased when shrinking, aspect
   ratio not kept): the same coefficients, the same 22-bit fixed point, the same rounding and
   the same order (horizontal pass, then vertical), so the pixels equal Image.resize's. */
"use strict";

(function (root) {
  const PRECISION_BITS = 32 - 8 - 2;
  const ONE_HALF = 1 << (PRECISION_BITS - 1);

  function bilinear(x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
  }

  /* Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: bounds and int coefficients. */
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = scale < 1.0 ? 1.0 : scale;
    const support = 1.0 * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Int32Array(outSize * ksize);
    const k = new Float64Array(ksize);
    const ss = 1.0 / filterscale;
    for (let xx = 0; xx < outSize; xx++) {
      const center = 0.0 + (xx + 0.5) * scale;
      let ww = 0.0;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      for (let x = 0; x < xmax; x++) {
        const w = bilinear((x + xmin - center + 0.5) * ss);
        k[x] = w;
        ww += w;
      }
      for (let x = 0; x < ksize; x++) {
        let v = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0;
        v = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
        kk[xx * ksize + x] = v;
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { ksize, bounds, kk };
  }

  function clip8(v) {
    v = v >> PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  /* RGB uint8 (h x w x 3) -> RGB uint8 (size x size x 3), exactly as Pillow's Image.resize(BILINEAR). */
  function resizeRGB(rgb, width, height, size) {
    if (width === size && height === size) return rgb;
    const horiz = coefficients(width, size);
    const vert = coefficients(height, size);
    const needH = width !== size;
    const needV = height !== size;
    let src = rgb, srcW = width, rowOffset = 0, rows = height;
    const vb = Int32Array.from(vert.bounds);
    if (needH) {
      const first = vb[0];
      const last = vb[size * 2 - 2] + vb[size * 2 - 1];
      for (let i = 0; i < size; i++) vb[i * 2] -= first;
      rows = last - first;
      const tmp = new Uint8Array(size * rows * 3);
      for (let yy = 0; yy < rows; yy++) {
        const inRow = (yy + first) * width * 3;
        for (let xx = 0; xx < size; xx++) {
          const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], kOff = xx * horiz.ksize;
          let s0 = ONE_HALF, s1 = ONE_HALF, s2 = ONE_HALF;
          for (let x = 0; x < xmax; x++) {
            const p = inRow + (x + xmin) * 3, w = horiz.kk[kOff + x];
            s0 += rgb[p] * w; s1 += rgb[p + 1] * w; s2 += rgb[p + 2] * w;
          }
          const o = (yy * size + xx) * 3;
          tmp[o] = clip8(s0); tmp[o + 1] = clip8(s1); tmp[o + 2] = clip8(s2);
        }
      }
      src = tmp; srcW = size; rowOffset = 0;
    }
    if (!needV) return src;
    const out = new Uint8Array(size * size * 3);
    for (let yy = 0; yy < size; yy++) {
      const ymin = (needH ? vb : vert.bounds)[yy * 2] + rowOffset, ymax = vert.bounds[yy * 2 + 1], kOff = yy * vert.ksize;
      for (let xx = 0; xx < srcW; xx++) {
        let s0 = ONE_HALF, s1 = ONE_HALF, s2 = ONE_HALF;
        for (let y = 0; y < ymax; y++) {
          const p = ((y + ymin) * srcW + xx) * 3, w = vert.kk[kOff + y];
          s0 += src[p] * w; s1 += src[p + 1] * w; s2 += src[p + 2] * w;
        }
        const o = (yy * srcW + xx) * 3;
        out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
      }
    }
    return out;
  }

  /* RGBA (canvas ImageData, not premultiplied) -> RGB, alpha composited on white like Pillow's alpha_composite. */
  function rgbaToRGB(rgba, pixels) {
    const rgb = new Uint8Array(pixels * 3);
    for (let i = 0; i < pixels; i++) {
      const a = rgba[i * 4 + 3];
      for (let c = 0; c < 3; c++) {
        const v = rgba[i * 4 + c];
        rgb[i * 3 + c] = a === 255 ? v : Math.round((v * a + 255 * (255 - a)) / 255);
      }
    }
    return rgb;
  }

  /* A photo file (Blob) -> {width, height, rgb} at full size, oriented as its EXIF says. */
  async function decode(blob) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", colorSpaceConversion: "none",
                                              premultiplyAlpha: "none" });
    } catch (err) {
      throw new Error("not an image this browser can decode (" + (blob.type || "unknown type") + ")");
    }
    const width = bitmap.width, height = bitmap.height;
    const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
      : Object.assign(document.createElement("canvas"), { width, height });
    const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const data = ctx.getImageData(0, 0, width, height).data;
    return { width, height, rgb: rgbaToRGB(data, width * height) };
  }

  /* A photo file -> the model's input pixels (uint8 size x size x 3) and the photo's size. */
  async function loadImage(blob, size) {
    const photo = await decode(blob);
    return { width: photo.width, height: photo.height, pixels: resizeRGB(photo.rgb, photo.width, photo.height, size) };
  }

  root.plantidPreprocess = { resizeRGB, loadImage, decode };
})(typeof self !== "undefined" ? self : globalThis);
