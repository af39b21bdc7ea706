//! Who may do what inside a team: the roles and the one permission matrix every route consults.
//! `docs/permissions.md` renders this table; a test keeps the two in step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A member's (or an API key's) role in one team, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    Owner,
    Admin,
    Editor,
    Viewer,
}

impl TeamRole {
    pub const ALL: [TeamRole; 4] = [TeamRole::Owner, TeamRole::Admin, TeamRole::Editor, TeamRole::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Owner => "owner",
            TeamRole::Admin => "admin",
            TeamRole::Editor => "editor",
            TeamRole::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<TeamRole> {
        TeamRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do `action`. The whole matrix is here.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            TeamRole::Owner => true,
            TeamRole::Admin => action != ManageOwners,
            TeamRole::Editor => matches!(action, Read | WriteContent | Publish | DeleteContent),
            TeamRole::Viewer => action == Read,
        }
    }

    /// At least as powerful as `other`.
    pub fn covers(self, other: TeamRole) -> bool {
        self <= other
    }
}

impl fmt::Display for TeamRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request wants to do, as the permission matrix sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read the team's objects (never the secrets inside them).
    Read,
    /// Create and edit posts, media, sources and workflows.
    WriteContent,
    /// Publish, schedule and approve posts.
    Publish,
    /// Delete posts, media, sources and workflows.
    DeleteContent,
    /// Connect and disconnect platform accounts and set their credentials.
    ManageConnections,
    /// Invite and remove members and change their roles (below owner).
    ManageMembers,
    /// Create and revoke API keys.
    ManageApiKeys,
    /// Read the audit log.
    ReadAudit,
    /// Rename the team and set its 2FA rule.
    ManageTeam,
    /// Grant or take the owner role, and delete the team.
    ManageOwners,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Read,
        Action::WriteContent,
        Action::Publish,
        Action::DeleteContent,
        Action::ManageConnections,
        Action::ManageMembers,
        Action::ManageApiKeys,
        Action::ReadAudit,
        Action::ManageTeam,
        Action::ManageOwners,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::WriteContent => "write_content",
            Action::Publish => "publish",
            Action::DeleteContent => "delete_content",
            Action::ManageConnections => "manage_connections",
            Action::ManageMembers => "manage_members",
            Action::ManageApiKeys => "manage_api_keys",
            Action::ReadAudit => "read_audit",
            Action::ManageTeam => "manage_team",
            Action::ManageOwners => "manage_owners",
        }
    }
}

/// The matrix as a Markdown table, for the docs.
pub fn permission_table() -> String {
    let mut out = String::from("| action | owner | admin | editor | viewer |\n|---|---|---|---|---|\n");
    for a in Action::ALL {
        out.push_str(&format!("| `{}` ", a.as_str()));
        for r in TeamRole::ALL {
            out.push_str(if r.allows(a) { "| yes " } else { "| no " });
        }
        out.push_str("|\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_keeps_its_promises() {
        use Action::*;
        for a in [Publish, DeleteContent, ManageConnections, ManageApiKeys, WriteContent] {
            assert!(!TeamRole::Viewer.allows(a), "a viewer must not {a:?}");
        }
        assert!(TeamRole::Viewer.allows(Read));
        for a in [ManageMembers, ManageConnections, ManageApiKeys, ReadAudit, ManageOwners] {
            assert!(!TeamRole::Editor.allows(a), "an editor must not {a:?}");
        }
        assert!(TeamRole::Admin.allows(ManageMembers) && !TeamRole::Admin.allows(ManageOwners));
        assert!(Action::ALL.into_iter().all(|a| TeamRole::Owner.allows(a)));
        // Power is monotone: a stronger role can do everything a weaker one can.
        for pair in TeamRole::ALL.windows(2) {
            for a in Action::ALL {
                assert!(!pair[1].allows(a) || pair[0].allows(a), "{} lacks {a:?} that {} has", pair[0], pair[1]);
            }
        }
    }

    #[test]
    fn the_documented_table_is_the_matrix() {
        let doc = include_str!("../../../docs/permissions.md");
        assert!(doc.contains(&permission_table()), "docs/permissions.md is stale; paste permission_table() into it");
    }
}
