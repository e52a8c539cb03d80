/*
** share.h -- what a node shares with a partner node besides messages: its
** directory (organizations, their providers and the services they offer)
** and aggregate indicators (KPI counts and statistics per partnership). No
** patient data in either, by construction: the queries read organization,
** provider and partnership records and numeric KPI values only.
**
** A node shares with peer P only what concerns its partnerships with P: the
** local organizations (node = this node) that are members of an active
** partnership with an organization hosted on P, and the indicators of those
** partnerships. What arrives is kept per peer, replacing what that peer sent
** before; an organization that claims another node than the peer that sent
** it is dropped. Depends on store, clock, cJSON.
*/
#ifndef CM_SHARE_H
#define CM_SHARE_H

#include <cjson/cJSON.h>

#include "clock.h"
#include "error.h"
#include "store.h"

/* Days of KPI observations an indicator covers. */
#define CM_SHARE_INDICATOR_DAYS 90

/* The directory this node (node_id) shares with peer: an array of
** {id, name, kind, node, phone?, email?, address?, services: [..],
** providers: [{id, name, role, specialty?}], partnerships: [ids]}. */
int cm_share_directory(cm_store *store, const char *node_id, const char *peer, cJSON **out,
                       cm_err *err);

/* Keep the directory peer sent (an array as above), replacing the last one.
** *kept and *dropped count organizations; dropped ones are named in
** dropped_why (the first one). CM_EINVAL when it is not an array of objects
** with an id and a name (nothing changes). */
int cm_share_directory_keep(cm_store *store, const cm_clock *clock, const char *peer,
                            const cJSON *orgs, int *kept, int *dropped, char *dropped_why,
                            size_t whysz, cm_err *err);

/* The indicators this node shares with peer: an array of {partnership,
** name, from, to, count, sum, mean, median, min, max} for each KPI a
** partnership with peer lists, over the last CM_SHARE_INDICATOR_DAYS days,
** observations labelled with a partner of that partnership (or unlabelled). */
int cm_share_indicators(cm_store *store, const cm_clock *clock, const char *node_id,
                        const char *peer, cJSON **out, cm_err *err);

/* Keep the indicators peer sent, replacing the last ones. CM_EINVAL when
** malformed (nothing changes). *kept counts them. */
int cm_share_indicators_keep(cm_store *store, const cm_clock *clock, const char *peer,
                             const cJSON *list, int *kept, cm_err *err);

#endif
