/*
 * mta_sts.c - RFC 8461 text formats and decisions; see mta_sts.h.
 */
#include "mta_sts.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

int
mta_sts_txt_parse(const char *txt, size_t len, char id[MTA_STS_ID_MAX + 1])
{
	static const char v[] = "v=STSv1";
	size_t i = sizeof(v) - 1;
	bool have_id = false;

	if (len < i || memcmp(txt, v, i) != 0)
		return -1;
	/* RFC 8461 3.1: sts-version 1*(*WSP ";" *WSP sts-field) [";"] */
	size_t k = i;
	while (k < len && is_wsp(txt[k]))
		k++;
	if (k >= len || txt[k] != ';')
		return -1; /* "v=STSv10" and the like are not STSv1 records */
	i = k;
	while (i < len) {
		while (i < len && is_wsp(txt[i]))
			i++;
		if (i >= len)
			break;
		if (txt[i] != ';')
			return -2;
		i++;
		while (i < len && is_wsp(txt[i]))
			i++;
		if (i >= len)
			break; /* a trailing ';' */
		size_t ns = i;
		while (i < len && txt[i] != '=' && txt[i] != ';' && !is_wsp(txt[i]))
			i++;
		if (i >= len || txt[i] != '=' || i == ns || i - ns > 32)
			return -2;
		size_t nl = i - ns;
		i++;
		size_t vs = i;
		while (i < len && txt[i] != ';' && !is_wsp(txt[i])) {
			unsigned char c = (unsigned char)txt[i];
			if (c < 0x21 || c > 0x7e || c == '=')
				return -2;
			i++;
		}
		size_t vl = i - vs;
		if (vl == 0)
			return -2;
		if (nl == 2 && memcmp(txt + ns, "id", 2) == 0) {
			if (vl > MTA_STS_ID_MAX)
				return -2;
			for (size_t j = vs; j < i; j++)
				if (!isalnum((unsigned char)txt[j]))
					return -2;
			if (!have_id) {
				memcpy(id, txt + vs, vl);
				id[vl] = '\0';
				have_id = true;
			}
		}
	}
	return have_id ? 0 : -2;
}

struct txt_walk {
	int valid, sts;
	char id[MTA_STS_ID_MAX + 1];
};

static int
txt_rr(void *arg, const uint8_t *rdata, size_t rdlen, uint32_t ttl)
{
	struct txt_walk *w = arg;
	char text[MTA_STS_TXT_MAX];
	size_t n = 0, off = 0;
	(void)ttl;
	/* RFC 1035 3.3.14: <character-string>+, joined */
	while (off < rdlen) {
		size_t l = rdata[off++];
		if (off + l > rdlen)
			return 0; /* a broken record counts as no record */
		size_t take = l < sizeof(text) - n ? l : sizeof(text) - n;
		memcpy(text + n, rdata + off, take);
		n += take;
		off += l;
	}
	char id[MTA_STS_ID_MAX + 1];
	int rc = mta_sts_txt_parse(text, n, id);
	if (rc == -1)
		return 0;
	w->sts++;
	if (rc == 0) {
		w->valid++;
		memcpy(w->id, id, sizeof(id));
	}
	return 0;
}

enum mta_sts_txt
mta_sts_txt_answer(const uint8_t *msg, size_t len, char id[MTA_STS_ID_MAX + 1])
{
	struct txt_walk w = {0};
	if (mx_answer_each(msg, len, 16 /* TXT */, txt_rr, &w) < 0)
		return MTA_STS_TXT_MALFORMED;
	if (w.sts != 1 || w.valid != 1)
		return MTA_STS_TXT_NONE;
	memcpy(id, w.id, sizeof(w.id));
	return MTA_STS_TXT_OK;
}

/* A pattern of an "mx:" line: a host name, or "*." and one; lowercase into out. */
static int
mx_pattern(const char *v, size_t vl, char out[MX_NAME_MAX + 2])
{
	char tmp[MX_NAME_MAX + 2];
	size_t off = 0;
	if (vl >= 2 && v[0] == '*' && v[1] == '.')
		off = 2;
	if (vl - off == 0 || vl > MX_NAME_MAX)
		return -1;
	memcpy(tmp, v + off, vl - off);
	tmp[vl - off] = '\0';
	for (size_t i = 0; tmp[i]; i++) {
		unsigned char c = (unsigned char)tmp[i];
		if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return -1;
	}
	char norm[MX_NAME_MAX + 2];
	if (mx_name_normalize(tmp, norm) != 0 || norm[0] == '\0')
		return -1;
	if (off + strlen(norm) > MX_NAME_MAX)
		return -1;
	strcpy(out, off ? "*." : "");
	strcat(out, norm);
	return 0;
}

int
mta_sts_policy_parse(const char *text, size_t len, struct mta_sts_policy *out, const char **err)
{
	bool have_version = false, have_mode = false, have_age = false;
	size_t i = 0;

	memset(out, 0, sizeof(*out));
	while (i < len) {
		size_t ls = i;
		while (i < len && text[i] != '\n')
			i++;
		size_t le = i;
		if (i < len)
			i++; /* the LF */
		if (le > ls && text[le - 1] == '\r')
			le--;
		while (le > ls && is_wsp(text[le - 1]))
			le--;
		if (le == ls)
			continue; /* blank line (e.g. a final CRLF) */
		const char *colon = memchr(text + ls, ':', le - ls);
		if (colon == NULL) {
			*err = "a line without ':'";
			return -1;
		}
		size_t ke = (size_t)(colon - text);
		while (ke > ls && is_wsp(text[ke - 1]))
			ke--;
		size_t vs = (size_t)(colon - text) + 1;
		while (vs < le && is_wsp(text[vs]))
			vs++;
		const char *k = text + ls, *v = text + vs;
		size_t kl = ke - ls, vl = le - vs;
		for (size_t j = 0; j < vl; j++)
			if ((unsigned char)v[j] < 0x20 || (unsigned char)v[j] > 0x7e) {
				*err = "a control or 8-bit byte in a value";
				return -1;
			}
		if (kl == 7 && memcmp(k, "version", 7) == 0) {
			if (have_version)
				continue;
			if (vl != 5 || memcmp(v, "STSv1", 5) != 0) {
				*err = "version is not STSv1";
				return -1;
			}
			have_version = true;
		} else if (kl == 4 && memcmp(k, "mode", 4) == 0) {
			if (have_mode)
				continue;
			if (vl == 7 && memcmp(v, "enforce", 7) == 0)
				out->mode = TLSP_STS_ENFORCE;
			else if (vl == 7 && memcmp(v, "testing", 7) == 0)
				out->mode = TLSP_STS_TESTING;
			else if (vl == 4 && memcmp(v, "none", 4) == 0)
				out->mode = TLSP_STS_NONE;
			else {
				*err = "mode is not enforce, testing or none";
				return -1;
			}
			have_mode = true;
		} else if (kl == 7 && memcmp(k, "max_age", 7) == 0) {
			if (have_age)
				continue;
			uint64_t a = 0;
			if (vl == 0 || vl > 10) {
				*err = "max_age is not 1 to 10 digits";
				return -1;
			}
			for (size_t j = 0; j < vl; j++) {
				if (!isdigit((unsigned char)v[j])) {
					*err = "max_age is not a number";
					return -1;
				}
				a = a * 10 + (uint64_t)(v[j] - '0');
			}
			out->max_age = a > MTA_STS_MAX_AGE_MAX ? MTA_STS_MAX_AGE_MAX : (uint32_t)a;
			have_age = true;
		} else if (kl == 2 && memcmp(k, "mx", 2) == 0) {
			if (out->nmx >= MTA_STS_MX_MAX)
				continue;
			if (mx_pattern(v, vl, out->mx[out->nmx]) != 0) {
				*err = "an mx pattern is not a host name";
				return -1;
			}
			out->nmx++;
		}
		/* other keys: extensions, ignored (3.2) */
	}
	if (!have_version || !have_mode || !have_age) {
		*err = !have_version ? "no version" : !have_mode ? "no mode" : "no max_age";
		return -1;
	}
	if (out->mode != TLSP_STS_NONE && out->nmx == 0) {
		*err = "no mx pattern";
		return -1;
	}
	return 0;
}

bool
mta_sts_mx_match(const struct mta_sts_policy *p, const char *host)
{
	char h[MX_NAME_MAX + 2];
	if (mx_name_normalize(host, h) != 0 || h[0] == '\0')
		return false;
	for (size_t i = 0; i < p->nmx; i++) {
		const char *pat = p->mx[i];
		if (pat[0] == '*' && pat[1] == '.') {
			/* exactly one label in place of the '*' */
			const char *dot = strchr(h, '.');
			if (dot != NULL && dot != h && strcmp(dot + 1, pat + 2) == 0)
				return true;
		} else if (strcmp(h, pat) == 0) {
			return true;
		}
	}
	return false;
}

enum mta_sts_step
mta_sts_after_txt(int txt, const char *txt_id, bool cached_fresh, const char *cached_id)
{
	if (txt == MTA_STS_TXT_OK) {
		if (cached_fresh && cached_id != NULL && strcmp(cached_id, txt_id) == 0)
			return MTA_STS_USE_CACHED; /* 5.1: same id, nothing new to fetch */
		return MTA_STS_FETCH;
	}
	/* no record, a broken one, or the lookup failed: a fresh cached policy still holds
	 * (3.3, 5.1: "until its max_age is over"), else none */
	return cached_fresh ? MTA_STS_USE_CACHED : MTA_STS_NO_POLICY;
}
