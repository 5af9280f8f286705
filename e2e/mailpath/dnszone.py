"""Reading DIR/dns.txt (zone-file syntax) the way a resolver would serve it to a verifier."""


def records(text):
    """[(owner, type, rdata-tokens)] from a zone file with $ORIGIN, comments and ( ) groups."""
    origin = ""
    last_owner = None
    out = []
    for line in logical_lines(text):
        tokens = tokenize(line)
        if not tokens:
            continue
        if tokens[0].upper() == "$ORIGIN":
            origin = tokens[1].rstrip(".") + "."
            continue
        if tokens[0].startswith("$"):
            continue
        if line[0].isspace():
            owner = last_owner
        else:
            owner = absolute(tokens.pop(0), origin)
            last_owner = owner
        # Skip TTL and class in either order.
        while tokens and (tokens[0].isdigit() or tokens[0].upper() in ("IN", "CH", "HS")):
            tokens.pop(0)
        rtype, rdata = tokens[0].upper(), tokens[1:]
        out.append((owner, rtype, rdata))
    return out


def absolute(name, origin):
    if name == "@":
        return origin
    if name.endswith("."):
        return name
    return f"{name}.{origin}" if origin else name + "."


def txt_value(rdata):
    """The TXT record's character strings joined, as a verifier sees the record."""
    return "".join(t[1:-1] if t.startswith('"') else t for t in rdata)


def logical_lines(text):
    """Lines with comments removed and parenthesized continuations joined."""
    buf, depth = "", 0
    for raw in text.splitlines():
        line, in_quote = "", False
        for ch in raw:
            if ch == '"':
                in_quote = not in_quote
            if ch == ";" and not in_quote:
                break
            if ch == "(" and not in_quote:
                depth += 1
                ch = " "
            elif ch == ")" and not in_quote:
                depth -= 1
                ch = " "
            line += ch
        buf = buf + " " + line if buf else line
        if depth == 0:
            if buf.strip():
                yield buf
            buf = ""


def tokenize(line):
    tokens, cur, in_quote = [], "", False
    for ch in line:
        if ch == '"':
            cur += ch
            in_quote = not in_quote
            if not in_quote:
                tokens.append(cur)
                cur = ""
        elif ch.isspace() and not in_quote:
            if cur:
                tokens.append(cur)
                cur = ""
        else:
            cur += ch
    if cur:
        tokens.append(cur)
    return tokens


def dkim_keys(text):
    """{selector._domainkey.domain.: TXT value} of every DKIM key record."""
    return {
        owner: txt_value(rdata)
        for owner, rtype, rdata in records(text)
        if rtype == "TXT" and "._domainkey." in owner
    }
