/* png2rgb IN.png OUT.rgb: decodes an 8-bit RGB, non-interlaced PNG (what diffgentor writes) to raw
 * RGB rows, width * 3 bytes each, top to bottom; an 8-bit greyscale one (an inpainting mask) comes
 * out as RGB too, each grey byte three times. A test tool: it lets the Makefile compare the
 * pixels of a PNG written by `dg generate` (Rust API) with raw pixels from the C API. Text chunks
 * (metadata) are skipped; every chunk's CRC is checked. Needs zlib (-lz). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int die(const char *msg) {
    fprintf(stderr, "png2rgb: %s\n", msg);
    return 1;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: png2rgb IN.png OUT.rgb\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror(argv[1]);
        return 1;
    }
    size_t cap = 1 << 16, len = 0, got;
    uint8_t *png = malloc(cap);
    while (png != NULL && (got = fread(png + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *bigger = realloc(png, cap *= 2);
            if (bigger == NULL) free(png);
            png = bigger;
        }
    }
    fclose(f);
    if (png == NULL) return die("out of memory");
    if (len < 8 || memcmp(png, "\x89PNG\r\n\x1a\n", 8) != 0) return die("not a PNG");

    uint32_t width = 0, height = 0;
    size_t bpp = 3; /* bytes per pixel: 3 for RGB, 1 for greyscale */
    uint8_t *idat = NULL;
    size_t idat_len = 0;
    int seen_end = 0;
    for (size_t pos = 8; pos + 12 <= len && !seen_end;) {
        uint32_t n = be32(png + pos);
        if (n > len - pos - 12) return die("truncated chunk");
        const uint8_t *type = png + pos + 4, *data = png + pos + 8;
        if (crc32(crc32(0L, Z_NULL, 0), type, n + 4) != be32(data + n)) return die("bad chunk CRC");
        if (memcmp(type, "IHDR", 4) == 0) {
            if (n != 13) return die("bad IHDR");
            width = be32(data);
            height = be32(data + 4);
            if (data[8] != 8 || (data[9] != 2 && data[9] != 0) || data[12] != 0)
                return die("only 8-bit RGB or greyscale non-interlaced PNGs are supported");
            bpp = data[9] == 2 ? 3 : 1;
        } else if (memcmp(type, "IDAT", 4) == 0) {
            uint8_t *more = realloc(idat, idat_len + n);
            if (more == NULL) return die("out of memory");
            idat = more;
            memcpy(idat + idat_len, data, n);
            idat_len += n;
        } else if (memcmp(type, "IEND", 4) == 0) {
            seen_end = 1;
        } else if (!(type[0] & 0x20)) {
            return die("unknown critical chunk");
        }
        pos += (size_t)n + 12;
    }
    if (!seen_end || width == 0 || height == 0 || idat == NULL) return die("incomplete PNG");

    size_t row = (size_t)width * bpp, raw_len = (row + 1) * height;
    uint8_t *raw = malloc(raw_len), *rgb = malloc(row * height);
    if (raw == NULL || rgb == NULL) return die("out of memory");
    uLongf out_len = (uLongf)raw_len;
    if (uncompress(raw, &out_len, idat, (uLong)idat_len) != Z_OK || out_len != raw_len)
        return die("bad image data");

    for (uint32_t y = 0; y < height; y++) {
        const uint8_t *in = raw + y * (row + 1) + 1;
        uint8_t *out = rgb + y * row, *up = y ? out - row : NULL;
        uint8_t filter = in[-1];
        for (size_t x = 0; x < row; x++) {
            int a = x >= bpp ? out[x - bpp] : 0, b = up ? up[x] : 0, c = up && x >= bpp ? up[x - bpp] : 0;
            int v;
            switch (filter) {
            case 0: v = 0; break;
            case 1: v = a; break;
            case 2: v = b; break;
            case 3: v = (a + b) / 2; break;
            case 4: v = paeth(a, b, c); break;
            default: return die("bad filter type");
            }
            out[x] = (uint8_t)(in[x] + v);
        }
    }

    if (bpp == 1) {
        uint8_t *expanded = malloc(row * height * 3);
        if (expanded == NULL) return die("out of memory");
        for (size_t i = 0; i < row * height; i++) {
            expanded[3 * i] = expanded[3 * i + 1] = expanded[3 * i + 2] = rgb[i];
        }
        free(rgb);
        rgb = expanded;
        row *= 3;
    }

    FILE *o = fopen(argv[2], "wb");
    if (o == NULL) {
        perror(argv[2]);
        return 1;
    }
    if (fwrite(rgb, 1, row * height, o) != row * height || fclose(o) != 0)
        return die("cannot write output");
    free(png);
    free(idat);
    free(raw);
    free(rgb);
    return 0;
}
