"""Image kernels in pure Python (float32 step by step)."""

from dlserver.rng import f32


def resize_image(src, sw, sh, c, dst, dw, dh, part):
    """kernels.resize_image: Darknet's separable bilinear resize of an sw x sh image of c planes
    into dst (dw x dh), through part (dw x sh x c floats)."""
    w_scale = f32((sw - 1) / (dw - 1)) if dw > 1 else 0.0
    h_scale = f32((sh - 1) / (dh - 1)) if dh > 1 else 0.0
    for k in range(c):
        for r in range(sh):
            row = (k * sh + r) * sw
            out = (k * sh + r) * dw
            for col in range(dw):
                if col == dw - 1 or sw == 1:
                    val = src[row + sw - 1]
                else:
                    sx = f32(col * w_scale)
                    ix = int(sx)
                    dx = f32(sx - ix)
                    val = f32(f32(f32(1 - dx) * src[row + ix]) + f32(dx * src[row + ix + 1]))
                part[out + col] = val
    for k in range(c):
        for r in range(dh):
            sy = f32(r * h_scale)
            iy = int(sy)
            dy = f32(sy - iy)
            base = (k * sh + iy) * dw
            out = (k * dh + r) * dw
            for col in range(dw):
                dst[out + col] = f32(f32(1 - dy) * part[base + col])
            if r == dh - 1 or sh == 1:
                continue
            nxt = base + dw
            for col in range(dw):
                dst[out + col] = f32(dst[out + col] + f32(dy * part[nxt + col]))
