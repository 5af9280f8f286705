"""The MailDomain, Mailboxes and Secrets the mail-path suite runs `postwarden local up` with.

Tests that change mailboxes edit `Manifest` and write it back to FILE; every other test uses
mailboxes those tests never touch, so one stack serves the whole session.
"""

import json
import os

DOMAIN = "lab.example"
ALIAS_DOMAIN = "alias.example"
HOSTNAME = "mail.lab.example"
ED25519_DOMAIN = "ed.example"
CONTINUITY_DOMAIN = "cont.example"

# localPart -> password. Passwords are long enough for any policy.
PASSWORDS = {
    "alice": "alice-Correct-Horse-1",
    "bob": "bob-Battery-Staple-2",
    "carol": "carol-Tr0ub4dor-3",
    # Only the mailbox lifecycle tests use these.
    "erin": "erin-Before-Change-4",
    "frank": "frank-Will-Be-Suspended-5",
    "grace": "grace-Will-Be-Removed-6",
}


def maildomain(name, **spec):
    return {
        "apiVersion": "postwarden.dev/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": name, "namespace": "mail"},
        "spec": spec,
    }


def mailbox(local_part, domain_ref="lab", **spec):
    return {
        "apiVersion": "postwarden.dev/v1alpha1",
        "kind": "Mailbox",
        "metadata": {"name": local_part, "namespace": "mail"},
        "spec": {
            "domainRef": {"name": domain_ref},
            "localPart": local_part,
            "passwordSecretRef": {"name": f"{local_part}-password"},
            **spec,
        },
    }


def password_secret(local_part, password):
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{local_part}-password", "namespace": "mail"},
        "type": "Opaque",
        "stringData": {"password": password},
    }


class Manifest:
    """The resources in FILE, editable by tests."""

    def __init__(self):
        self.domain = maildomain(
            "lab",
            domain=DOMAIN,
            aliasDomains=[ALIAS_DOMAIN],
            hostname=HOSTNAME,
            mta={"replicas": 1},
            imap={"replicas": 3},
            spam={"enabled": True, "addHeaderScore": 6, "rejectScore": 15},
        )
        self.passwords = dict(PASSWORDS)
        self.mailboxes = {
            "alice": mailbox("alice", aliases=["postmaster", "sales"]),
            # bob forwards to carol and keeps a copy.
            "bob": mailbox("bob", forwardTo=[f"carol@{DOMAIN}"]),
            "carol": mailbox("carol"),
            "erin": mailbox("erin"),
            "frank": mailbox("frank"),
            "grace": mailbox("grace"),
        }
        # Further objects (ConfigMaps) written after the mailboxes.
        self.extra = []

    @classmethod
    def ed25519(cls):
        """A second, minimal domain signing with an Ed25519 key (RFC 8463) and, dual signing,
        an RSA one, with one mailbox."""
        m = cls()
        m.domain = maildomain(
            "ed",
            domain=ED25519_DOMAIN,
            hostname=f"mail.{ED25519_DOMAIN}",
            mta={"replicas": 1},
            imap={"replicas": 1},
            dkim={"algorithm": "ed25519", "dualSigning": True},
        )
        m.passwords = {"alice": PASSWORDS["alice"]}
        m.mailboxes = {"alice": mailbox("alice", domain_ref="ed")}
        return m

    @classmethod
    def continuity(cls, upstream_port):
        """A domain whose mailboxes live at a hosted provider (the stand-in on 127.0.0.1 at
        `upstream_port`): this stack is its secondary MX. "helpdesk" has no Mailbox, only a
        line in the recipients ConfigMap; the provider refuses "gone" (a deleted user)."""
        m = cls()
        m.domain = maildomain(
            "cont",
            domain=CONTINUITY_DOMAIN,
            hostname=f"mx2.{CONTINUITY_DOMAIN}",
            mta={"replicas": 1},
            imap={"replicas": 1},
            continuity={
                "upstream": {"hosts": ["127.0.0.1"], "port": upstream_port, "tls": "Encrypt"},
                "recipients": {"configMapRef": {"name": "cont-recipients"}},
                "detection": {"intervalSeconds": 2, "failureThreshold": 2},
            },
        )
        m.passwords = {k: PASSWORDS[k] for k in ("alice", "bob")}
        m.passwords["gone"] = "gone-Deleted-At-The-Provider-7"
        m.mailboxes = {k: mailbox(k, domain_ref="cont") for k in m.passwords}
        m.extra = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cont-recipients", "namespace": "mail"},
                "data": {"recipients": f"# no Mailbox here\nhelpdesk@{CONTINUITY_DOMAIN}\n"},
            }
        ]
        return m

    def text(self):
        # JSON is YAML: one document per object, no YAML library needed.
        docs = [self.domain]
        for local_part, mb in self.mailboxes.items():
            docs.append(mb)
            docs.append(password_secret(local_part, self.passwords[local_part]))
        docs.extend(self.extra)
        return "".join("---\n" + json.dumps(d, indent=1) + "\n" for d in docs)

    def write(self, path):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.text())
        # Replace atomically so a reload never reads half a file.
        os.replace(tmp, path)
