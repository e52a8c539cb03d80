/*
** lscan.h -- the pieces of Lua's lexical rules that the binding's source
** scanners share: line breaks counted as Lua counts them, long brackets
** ("[[", "[==[" and their closings) and comments. lcheck.c lexes workflow
** files with them, lconfig.c finds the line of a configuration key.
** Header-only, no state. Any thread.
*/
#ifndef CM_LSCAN_H
#define CM_LSCAN_H

#include <limits.h>
#include <stddef.h>

/* At a line break at i: the index after it ("\r\n" and "\n\r" count once, as in Lua). */
static inline size_t cm_lscan_line_break(const char *t, size_t len, size_t i)
{
    if (i + 1 < len && (t[i + 1] == '\n' || t[i + 1] == '\r') && t[i + 1] != t[i])
        return i + 2;
    return i + 1;
}

/* The level of a long bracket opening at i ("[[" 0, "[==[" 2); -1 if none. */
static inline int cm_lscan_long_level(const char *t, size_t len, size_t i)
{
    size_t j = i + 1;
    while (j < len && t[j] == '=')
        j++;
    return j < len && t[j] == '[' && j - i - 1 < INT_MAX ? (int)(j - i - 1) : -1;
}

/* From i, the index of the long bracket's closing "]=*]" of level lvl (len
** if none); *line counts the line breaks passed. */
static inline size_t cm_lscan_long_close(const char *t, size_t len, size_t i, int lvl, int *line)
{
    while (i < len) {
        if (t[i] == '\n' || t[i] == '\r') {
            i = cm_lscan_line_break(t, len, i);
            (*line)++;
            continue;
        }
        if (t[i] == ']') {
            size_t j = i + 1;
            while (j < len && t[j] == '=')
                j++;
            if (j < len && t[j] == ']' && j - i - 1 == (size_t)lvl)
                return i;
        }
        i++;
    }
    return len;
}

/* A comment after its "--": the index where it ends (a line comment at its
** line break, which is not passed). */
static inline size_t cm_lscan_skip_comment(const char *t, size_t len, size_t i, int *line)
{
    int lvl;
    if (i < len && t[i] == '[' && (lvl = cm_lscan_long_level(t, len, i)) >= 0) {
        size_t end = cm_lscan_long_close(t, len, i + (size_t)lvl + 2, lvl, line);
        return end < len ? end + (size_t)lvl + 2 : len;
    }
    while (i < len && t[i] != '\n' && t[i] != '\r')
        i++;
    return i;
}

#endif
