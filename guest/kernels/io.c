/* Whole files, for a batch of them in one call from Python (dlserver.dataset):
 *
 *   read_file: the file's directory is opened once per batch (dlk_dirs: up to DLK_DIRS of them,
 *   replaced in turn), then the file is stat'ed and opened by its own name relative to that
 *   directory, so the host resolves one path component per call instead of the whole path
 *   (under wasmtime each stat resolves the path twice: its metadata hash and its stat). The
 *   stat comes first: a regular file of at most max_bytes (max_bytes < 0: any size), because
 *   opening a FIFO would wait for a writer for ever. Then open, pread (DLK_READ_STEP bytes at
 *   a time, at offset got, until a read comes back shorter), close.
 *   The bytes land in *buf (grown by doubling *cap as needed, kept for the next file); returns
 *   1 with *len set, or 0 where the directory, stat, open, pread or the growth failed or the
 *   file is not regular or too long (the caller's reader then gives the error). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "kernels.h"

void dlk_dirs_init(struct dlk_dirs *dirs)
{
    memset(dirs, 0, sizeof *dirs);
    for (int i = 0; i < DLK_DIRS; ++i) dirs->fd[i] = -1;
}

void dlk_dirs_close(struct dlk_dirs *dirs)
{
    for (int i = 0; i < DLK_DIRS; ++i) {
        if (dirs->fd[i] >= 0) close(dirs->fd[i]);
        free(dirs->path[i]);
    }
    dlk_dirs_init(dirs);
}

/* The descriptor of directory path[0:n) ("/" where n is 0), opened now unless it is open;
 * -1 where it is not a directory (stat'ed before the open) or cannot be opened. */
static int dir_fd(struct dlk_dirs *dirs, const char *path, size_t n)
{
    for (int i = 0; i < DLK_DIRS; ++i)
        if (dirs->path[i] && dirs->len[i] == n && memcmp(dirs->path[i], path, n) == 0) return dirs->fd[i];
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    memcpy(copy, path, n);
    copy[n] = 0;
    struct stat st; /* first: under wasmtime an O_DIRECTORY open of a FIFO waits like any other */
    int fd = stat(n ? copy : "/", &st) == 0 && S_ISDIR(st.st_mode) ? open(n ? copy : "/", O_RDONLY | O_DIRECTORY) : -1;
    if (fd < 0) { free(copy); return -1; }
    int slot = dirs->next;
    dirs->next = (slot + 1) % DLK_DIRS;
    if (dirs->fd[slot] >= 0) close(dirs->fd[slot]);
    free(dirs->path[slot]);
    dirs->fd[slot] = fd;
    dirs->path[slot] = copy;
    dirs->len[slot] = n;
    return fd;
}

int dlk_read_file(struct dlk_dirs *dirs, const char *path, char **buf, size_t *cap, size_t *len,
                  long long max_bytes)
{
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    int dir = slash ? dir_fd(dirs, path, (size_t)(slash - path)) : AT_FDCWD;
    if (dir == -1) return 0;
    struct stat st;
    if (fstatat(dir, name, &st, 0) != 0 || !S_ISREG(st.st_mode)) return 0;
    if (max_bytes >= 0 && (long long)st.st_size > max_bytes) return 0;
    int fd = openat(dir, name, O_RDONLY);
    if (fd < 0) return 0;
    size_t got = 0;
    int ok = 1;
    for (;;) {
        if (max_bytes >= 0 && (long long)got > max_bytes) { ok = 0; break; } /* grown since */
        if (*cap < got + DLK_READ_STEP) {
            char *bigger = realloc(*buf, *cap * 2);
            if (!bigger) { ok = 0; break; }
            *buf = bigger;
            *cap *= 2;
        }
        ssize_t r = pread(fd, *buf + got, DLK_READ_STEP, (off_t)got);
        if (r < 0) { ok = 0; break; }
        got += (size_t)r;
        if (r < DLK_READ_STEP) break;
    }
    close(fd);
    *len = got;
    return ok;
}
